/* chat_memo: records of a shape seen before, formatted without rendering.
 *
 * A data set repeats a few shapes of conversation: the same roles in the
 * same order, the same tool list and tool calls; only the messages' texts
 * differ. When the template used those texts only to print them (whole,
 * trimmed or through tojson) and to ask whether they are empty or what
 * type they are (the renderings were watched: tmpl_ctx_watch says what
 * that allows), a record's text is the template's text of its shape with
 * each content in its place, and the learned spans lie at the same places
 * around them.
 *
 * The first record of a shape is rendered as ever and learned from: its
 * rendering cut into literal pieces and contents (the origins say which
 * bytes are a message's content), each end of a learned span as a piece
 * and an offset in it. The rendering of each prefix that gave a turn's
 * start must be the whole rendering's pieces up to a point, so that the
 * start falls in the same place for every record of the shape. A template
 * that never reads add_generation_prompt may render a prefix that is not
 * the whole rendering's beginning (Mistral's print the system prompt in
 * the last user message only): that turn starts at its content, and a
 * record whose text the prefix's pieces begin after all is rendered. Two
 * messages compared that are equal but for their contents (Mistral's
 * `message == user_messages[-1]`) are kept with whether the contents were
 * the same; a record where that differs is rendered. The next records of
 * the shape are written from the pieces, their contents escaped in place:
 * the bytes the renderer would give.
 *
 * The shape (the key) is everything the renderings see but the contents'
 * text: the template, each message's keys and values (tool calls
 * included), the tool list (its jd_shared block, held by the memo, or its
 * value), and of each content whether it is empty, blank, all white space,
 * and starts or ends with white space (all a trim or a truth test sees).
 *
 * One memo per thread (chat_model_for_thread's copy has its own).
 */
#ifndef LORAPIPE_CHAT_MEMO_H
#define LORAPIPE_CHAT_MEMO_H

#include <stddef.h>

#include "jdoc.h"
#include "template.h"

struct jsonl_buf;
struct chat_memo;
struct memo_shape;
struct memo_learn;

struct chat_memo *chat_memo_new(void);
void chat_memo_free(struct chat_memo *m);

/* The entry of the shape of msgs and tools rendered with t, made when
 * new; NULL when the record cannot be replayed (a content that is not a
 * string, contents over 64 KiB in all) or memory is short. */
struct memo_shape *chat_memo_find(struct chat_memo *m, const void *t, const struct jd *msgs, const struct jd *tools);
/* Whether the shape has not been tried yet: its first record is to be watched and learned from. */
int chat_memo_untried(const struct memo_shape *e);
/* Writes the record's text as a JSON string at the end of b, sets
 * *spans (malloc'd, *nspans [start, end) pairs) to its train spans and
 * returns 0; -1 (b untouched) when the shape is not learned, strftime_now
 * would now print another text (the entry is then tried again), or the
 * text would pass max_output bytes. */
int chat_memo_put(struct chat_memo *m, struct memo_shape *e, const struct jd *msgs, size_t max_output,
		  struct jsonl_buf *b, long **spans, size_t *nspans);

/* Learning from the first record: its whole rendering ro (with runs),
 * then each prefix rendering po (with runs) that gave a turn's start, then
 * the spans. Any step may find the shape unreplayable: the entry is then
 * never tried again. But a prefix rendering that begins ro's text only by
 * its bytes (other pieces: a content that reads as a literal) makes the
 * record one not to learn from: the shape's next record is learned from,
 * up to four records. chat_memo_learn_end frees l. */
/* args_checked: chat checked that the tool calls' arguments, as printed, parse back. */
struct memo_learn *chat_memo_learn_begin(const struct tmpl_output *ro, const struct jd *msgs, int args_checked);
void chat_memo_learn_prefix(struct memo_learn *l, const struct tmpl_output *po);
/* A prefix rendering po (with runs) that was not ro's beginning, of a
 * template that never reads add_generation_prompt: its turn starts where
 * its content does, unless po is the text's beginning, which the replay
 * checks (a record whose text po's pieces begin is rendered). */
void chat_memo_learn_apart(struct memo_learn *l, const struct tmpl_output *po);
/* Also where the learning failed (fail set): the shape is refused. */
void chat_memo_learn_end(struct chat_memo *m, struct memo_shape *e, struct memo_learn *l, const long *spans,
			 size_t nspans, const struct tmpl_watch *w, int fail);

/* The line memo: a record whose line is, but for its holes, the line of a
 * record formatted through a learned shape, is written without being
 * parsed. The holes are each message's content (a string) and each
 * top-level string or number; the rest of the line (its key) must be the
 * same bytes, and each content of the same class (see above). The parse
 * of such a line is the other's but for the holes' values, so its shape
 * is the other's (the record's rendering sees "messages" and "tools",
 * never a hole: a line whose "tools" is a string or a number is not
 * learned): the contents are put in their places as chat_memo_put puts
 * them, the other top-level values are handed back.
 *
 * A line that follows two lines of one key is first read against that key:
 * its literal bytes compared, its holes read (20-turn lines: 28% less time
 * than scanning their structure, hashing and looking the key up).
 *
 * chat_memo_line_put scans line[0..len) and writes its text as
 * chat_memo_put does, but *spans is the memo's own array, valid until the
 * next put (not malloc'd: one record after another, the line memo's
 * records make no allocation); it sets *top, *ntop to its top-level members but
 * "messages" (strings, numbers, true, false and null as their values;
 * arrays and objects by their kind alone, unread), valid until the next
 * scan. -1 when the line is not one the memo takes or knows; then, once
 * the record was formatted through shape e, chat_memo_line_learn(line,
 * len) remembers it: recmsgs its parsed "messages", system --system's
 * text or NULL (whose content the shape's first message may be). The line
 * memo takes only records of "messages"; with --add-generation-prompt the
 * caller does not use it. */
int chat_memo_line_put(struct chat_memo *m, const char *line, size_t len, const char *system, size_t max_output,
		       struct jsonl_buf *b, long **spans, size_t *nspans, const struct jd_member **top, size_t *ntop);
void chat_memo_line_learn(struct chat_memo *m, const char *line, size_t len, const struct memo_shape *e,
			  const struct jd *recmsgs, const char *system);

/* What the memo did (tests, --progress). */
struct chat_memo_stats {
	unsigned long long replayed; /* records written from a shape */
	unsigned long long unparsed; /* of those, records written from their line (chat_memo_line_put) */
	unsigned long long learned;  /* shapes learned */
	unsigned long long refused;  /* shapes refused: rendered every time */
};
struct chat_memo_stats chat_memo_stats(const struct chat_memo *m); /* m NULL: all 0 */

#endif

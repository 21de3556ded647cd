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
 * start falls in the same place for every record of the shape. The next
 * records of the shape are written from the pieces, their contents
 * escaped in place: the bytes the renderer would give.
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
 * never tried again. chat_memo_learn_end frees l. */
/* args_checked: chat checked that the tool calls' arguments, as printed, parse back. */
struct memo_learn *chat_memo_learn_begin(const struct tmpl_output *ro, const struct jd *msgs, int args_checked);
void chat_memo_learn_prefix(struct memo_learn *l, const struct tmpl_output *po);
/* Also where the learning failed (fail set): the shape is refused. */
void chat_memo_learn_end(struct chat_memo *m, struct memo_shape *e, struct memo_learn *l, const long *spans,
			 size_t nspans, const struct tmpl_watch *w, int fail);

/* Records written from a shape, shapes learned, shapes refused (tests, --progress). */
void chat_memo_stats(const struct chat_memo *m, unsigned long long *replayed, unsigned long long *learned,
		     unsigned long long *refused);

#endif

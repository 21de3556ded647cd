/* generate: text generation with a KV cache (see generate.h).
 *
 * Prompts run in groups of o->batch: each prompt of a group is prefilled
 * alone (one forward call, its own cache sized for it plus max_new), then
 * every decoding step runs the group's unfinished prompts in one call
 * (model_forward_batch), which reads each weight once for all of them and
 * gives each the bits it would get alone — the batch changes speed, not text.
 *
 * Random numbers: lib/rng.h; the state of prompt i starts at seed + i. A
 * draw takes one number u in [0, 1) and walks the kept tokens, from most to
 * least likely (equal ones by id) when top-k or top-p kept a subset, in id
 * order when every token is kept, until the running sum of probabilities
 * passes u times their total.
 *
 * Top-k keeps exactly k tokens, ties at the k-th logit going to the lower ids
 * (llama.cpp's rule; transformers would keep every tie).
 *
 * Text: after each token the whole generated sequence is decoded again, as
 * Hugging Face's TextStreamer does, because a token's text depends on its
 * neighbours (SentencePiece strips the first token's space, byte tokens make
 * a character only together). What is streamed must stay a prefix of every
 * later decoding, so the tail is held back while it is a run of U+FFFD (bytes
 * of a character not yet complete, which the decoder shows as U+FFFD) or
 * while it could still begin a stop string. Special tokens other than the
 * end token are kept in the text (tool-call markers, for instance).
 */
#include "generate.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

/* ------------------------------------------------------------------ sampling */

struct cand {
	float logit;
	int32_t id;
};

/* a ranks before b: higher logit, then lower id. */
static int cand_before(const struct cand *a, const struct cand *b)
{
	return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cand_cmp(const void *pa, const void *pb)
{
	const struct cand *a = pa, *b = pb;
	return cand_before(a, b) ? -1 : cand_before(b, a) ? 1 : 0;
}

static int32_t argmax(const float *x, int n)
{
	int32_t best = 0;
	for (int i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return best;
}

/* The k best of logits[0..vocab), best first, into c[0..k): a heap whose
 * root is the worst kept token. */
static void top_k(const float *logits, int vocab, int k, struct cand *c)
{
	for (int i = 0; i < vocab; i++) {
		struct cand x = {logits[i], i};
		int j;
		if (i < k) {
			for (j = i; j > 0 && cand_before(&c[(j - 1) / 2], &x); j = (j - 1) / 2)
				c[j] = c[(j - 1) / 2];
			c[j] = x;
			continue;
		}
		if (!cand_before(&x, &c[0]))
			continue;
		for (j = 0;;) { /* sift the new token down from the root */
			int l = 2 * j + 1, r = l + 1, w = j;
			const struct cand *worst = &x;
			if (l < k && cand_before(worst, &c[l]))
				w = l, worst = &c[l];
			if (r < k && cand_before(worst, &c[r]))
				w = r;
			if (w == j)
				break;
			c[j] = c[w];
			j = w;
		}
		c[j] = x;
	}
	qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

/* Draws from c[0..n) (logit fields hold probabilities, not normalized). */
static int32_t draw(const struct cand *c, int n, double total, uint64_t *rng)
{
	double u = rng_uniform(rng) * total, sum = 0;
	for (int i = 0; i < n; i++) {
		sum += c[i].logit;
		if (u < sum)
			return c[i].id;
	}
	return c[n - 1].id; /* rounding left u at the very top */
}

/* How many of the most likely tokens top-p keeps: c[0..n) sorted, with
 * probabilities summing to total. */
static int top_p_count(const struct cand *c, int n, double total, double top_p)
{
	double sum = 0;
	for (int i = 0; i < n; i++) {
		sum += c[i].logit;
		if (sum >= top_p * total)
			return i + 1;
	}
	return n;
}

int32_t gen_sample(float *logits, int vocab, const struct gen_opts *o, uint64_t *rng)
{
	if (o->temperature <= 0 || vocab <= 1)
		return argmax(logits, vocab);
	int k = o->top_k > 0 && o->top_k < vocab ? o->top_k : vocab;
	int use_p = o->top_p > 0 && o->top_p < 1;
	double inv_t = 1.0 / o->temperature;
	if (k == vocab && !use_p) {
		/* Every token stays: probabilities in place, drawn in id order. */
		float mx = logits[argmax(logits, vocab)];
		double total = 0;
		for (int i = 0; i < vocab; i++)
			total += logits[i] = (float)exp((double)(logits[i] - mx) * inv_t);
		double u = rng_uniform(rng) * total, sum = 0;
		for (int i = 0; i < vocab; i++) {
			sum += logits[i];
			if (u < sum)
				return i;
		}
		return argmax(logits, vocab);
	}
	struct cand *c = malloc((size_t)vocab * sizeof *c);
	if (!c)
		return argmax(logits, vocab); /* no memory for the sort: the most likely token */
	int n;
	if (k < vocab) {
		top_k(logits, vocab, k, c);
		n = k;
	} else {
		for (int i = 0; i < vocab; i++)
			c[i] = (struct cand){logits[i], i};
		n = vocab;
	}
	/* Softmax over the kept tokens, in the logit fields. */
	float mx = k < vocab ? c[0].logit : logits[argmax(logits, vocab)];
	double total = 0;
	for (int i = 0; i < n; i++)
		total += c[i].logit = (float)exp((double)(c[i].logit - mx) * inv_t);
	if (use_p && k < vocab) {
		n = top_p_count(c, n, total, o->top_p);
	} else if (use_p) {
		/* Only the most likely few are sorted: those above a threshold, which
		 * is lowered until they hold top_p of the mass (they are then exactly
		 * the head of the full order). */
		for (double th = 1e-4;; th *= 1e-4) {
			int m = 0;
			double held = 0;
			for (int i = 0; i < vocab; i++)
				if (c[i].logit >= th * total || th < 1e-30) {
					struct cand t = c[i];
					c[i] = c[m], c[m++] = t;
					held += t.logit;
				}
			if (held >= o->top_p * total || m == vocab || th < 1e-30) {
				qsort(c, (size_t)m, sizeof *c, cand_cmp);
				n = top_p_count(c, m, total, o->top_p);
				break;
			}
		}
	}
	double kept = 0;
	for (int i = 0; i < n; i++)
		kept += c[i].logit;
	int32_t id = draw(c, n, kept, rng);
	free(c);
	return id;
}

/* ------------------------------------------------------------- text stream */

/* The text side of one prompt's generation. */
struct stream {
	const struct tokenizer *tk;
	const struct gen_opts *o;
	int prompt;
	int32_t *ids;
	int n, cap;
	char *text;     /* decoding of ids[0..n) */
	size_t len;
	size_t emitted; /* bytes of text passed to on_text */
	size_t cut;     /* where a stop string begins, or SIZE_MAX */
	int diverged;   /* a decoding did not extend the streamed text: stream no more */
};

static int stream_push(struct stream *s, int32_t id, struct err *err)
{
	if (s->n == s->cap) {
		int cap = s->cap ? s->cap * 2 : 64;
		int32_t *p = realloc(s->ids, (size_t)cap * sizeof *p);
		if (!p)
			return err_sys(err, "out of memory");
		s->ids = p, s->cap = cap;
	}
	s->ids[s->n++] = id;
	return 0;
}

static int is_fffd(const char *p) { return (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBF && (unsigned char)p[2] == 0xBD; }

/* The end of what can be streamed: before a trailing run of U+FFFD and
 * before the longest tail that is a proper prefix of a stop string. */
static size_t stable_end(const struct stream *s)
{
	size_t end = s->len;
	while (end >= 3 && is_fffd(s->text + end - 3))
		end -= 3;
	for (int i = 0; i < s->o->n_stop; i++) {
		const char *st = s->o->stop[i];
		size_t sl = strlen(st);
		for (size_t k = sl > 1 ? sl - 1 : 0; k > 0; k--)
			if (k <= s->len && s->len - k < end && !memcmp(s->text + s->len - k, st, k)) {
				end = s->len - k;
				break;
			}
	}
	while (end > s->emitted && end < s->len && ((unsigned char)s->text[end] & 0xC0) == 0x80)
		end--; /* never split a character */
	return end;
}

static void stream_emit(struct stream *s, size_t end)
{
	if (end > s->emitted && !s->diverged && s->o->on_text)
		s->o->on_text(s->o->ctx, s->prompt, s->text + s->emitted, end - s->emitted);
	if (end > s->emitted)
		s->emitted = end;
}

/* Decodes again after a new token; finds the first stop string and streams
 * what is final. Returns 1 when a stop string was found, 0, or -1. */
static int stream_update(struct stream *s, struct err *err)
{
	char *text;
	size_t len;
	if (tokenizer_decode(s->tk, (const uint32_t *)s->ids, (size_t)s->n, 0, &text, &len, err) < 0)
		return -1;
	if (s->emitted && (len < s->emitted || memcmp(text, s->text, s->emitted)))
		s->diverged = 1;
	free(s->text);
	s->text = text, s->len = len;
	/* No stop string can begin in the streamed text: its tail was held back. */
	for (int i = 0; i < s->o->n_stop; i++) {
		const char *st = s->o->stop[i];
		if (!*st)
			continue;
		const char *at = memmem(text + s->emitted, len - s->emitted, st, strlen(st));
		if (at && (size_t)(at - text) < s->cut)
			s->cut = (size_t)(at - text);
	}
	if (s->cut != SIZE_MAX)
		return 1;
	stream_emit(s, stable_end(s));
	return 0;
}

/* ---------------------------------------------------------------- generate */

static int is_end(const struct model_config *cfg, const struct gen_opts *o, int32_t id)
{
	for (int i = 0; i < cfg->n_eos; i++)
		if (cfg->eos_ids[i] == id)
			return 1;
	for (int i = 0; i < o->n_stop_ids; i++)
		if (o->stop_ids[i] == id)
			return 1;
	return 0;
}

/* Tokens prompt i may add: max_new, less when the model's context ends first. */
static int room(const struct model *m, int len, const struct gen_opts *o)
{
	int r = o->max_new > 0 ? o->max_new : 0;
	if (m->cfg.max_pos > 0 && len + r > m->cfg.max_pos)
		r = m->cfg.max_pos - len;
	return r;
}

/* One prompt's generation in progress. */
struct gen_seq {
	struct stream s;
	struct kv_cache *kv;
	uint64_t rng;
	int limit, made; /* tokens it may add, tokens sampled so far */
	int done;
	int32_t next;    /* the token to run next */
	struct gen_result *res;
};

/* Samples seq's next token from its logits and streams it; marks it done at
 * an end token, a stop string or its limit. */
static int gen_step(const struct model *m, const struct gen_opts *o, struct gen_seq *q, float *logits,
		    struct err *err)
{
	int32_t id = gen_sample(logits, m->cfg.vocab, o, &q->rng);
	q->made++;
	if (is_end(&m->cfg, o, id)) {
		q->res->stop = GEN_EOS;
		q->done = 1;
		return 0;
	}
	if (stream_push(&q->s, id, err) < 0)
		return -1;
	int found = stream_update(&q->s, err);
	if (found < 0)
		return -1;
	if (found) {
		q->res->stop = GEN_STOP_STRING;
		q->done = 1;
	}
	if (q->made >= q->limit)
		q->done = 1;
	q->next = id;
	return 0;
}

/* The text of a finished sequence into its result. */
static int gen_finish(const struct tokenizer *tk, struct gen_seq *q, struct err *err)
{
	struct stream *s = &q->s;
	if (!s->text && tokenizer_decode(tk, (const uint32_t *)s->ids, 0, 0, &s->text, &s->len, err) < 0)
		return -1;
	if (s->cut != SIZE_MAX)
		s->len = s->cut;
	s->text[s->len] = 0;
	stream_emit(s, s->len);
	q->res->ids = s->ids, q->res->n_ids = s->n;
	q->res->text = s->text, q->res->len = s->len;
	s->ids = NULL, s->text = NULL;
	return 0;
}

/* Prompts first .. first + n - 1, decoded together: each prefilled alone,
 * then one step for all that are still going per forward call. */
static int generate_group(const struct model *m, const struct tokenizer *tk, const int32_t *const *prompts,
			  const int *lens, int first, int n, const struct gen_opts *o, struct gen_result *results,
			  struct err *err)
{
	const int V = m->cfg.vocab;
	struct gen_seq *q = calloc((size_t)n, sizeof *q);
	struct kv_cache **kvs = calloc((size_t)n, sizeof *kvs);
	int32_t *toks = calloc((size_t)n, sizeof *toks);
	int *who = calloc((size_t)n, sizeof *who);
	float *logits = malloc((size_t)n * V * sizeof *logits);
	int rc = -1;
	if (!q || !kvs || !toks || !who || !logits) {
		err_sys(err, "out of memory");
		goto out;
	}
	for (int b = 0; b < n; b++) {
		int i = first + b;
		q[b] = (struct gen_seq){.s = {.tk = tk, .o = o, .prompt = i, .cut = SIZE_MAX},
					.rng = o->seed + (uint64_t)i, .limit = room(m, lens[i], o), .res = &results[i]};
		q[b].res->stop = GEN_LENGTH;
		if (q[b].limit <= 0) {
			q[b].done = 1;
			continue;
		}
		if (!(q[b].kv = kv_cache_new(&m->cfg, lens[i] + q[b].limit, err)) ||
		    model_forward(m, o->lora, q[b].kv, prompts[i], lens[i], logits, 0, err) < 0 ||
		    gen_step(m, o, &q[b], logits, err) < 0) {
			err_wrap(err, "prompt %d", i);
			goto out;
		}
	}
	for (;;) {
		int k = 0;
		for (int b = 0; b < n; b++)
			if (!q[b].done)
				who[k] = b, kvs[k] = q[b].kv, toks[k] = q[b].next, k++;
		if (!k)
			break;
		if (model_forward_batch(m, o->lora, kvs, toks, k, logits, err) < 0) {
			err_wrap(err, "prompts %d .. %d", first, first + n - 1);
			goto out;
		}
		for (int j = 0; j < k; j++)
			if (gen_step(m, o, &q[who[j]], logits + (size_t)j * V, err) < 0) {
				err_wrap(err, "prompt %d", first + who[j]);
				goto out;
			}
	}
	for (int b = 0; b < n; b++)
		if (gen_finish(tk, &q[b], err) < 0) {
			err_wrap(err, "prompt %d", first + b);
			goto out;
		}
	rc = 0;
out:
	for (int b = 0; q && b < n; b++) {
		kv_cache_free(q[b].kv);
		free(q[b].s.ids);
		free(q[b].s.text);
	}
	free(q);
	free(kvs);
	free(toks);
	free(who);
	free(logits);
	return rc;
}

int generate(const struct model *m, const struct tokenizer *tk, const int32_t *const *prompts, const int *lens,
	     int n, const struct gen_opts *o, struct gen_result *results, struct err *err)
{
	memset(results, 0, (size_t)(n > 0 ? n : 0) * sizeof *results);
	for (int i = 0; i < n; i++) {
		if (lens[i] <= 0)
			return err_set(err, "prompt %d: empty", i);
		if (m->cfg.max_pos > 0 && lens[i] > m->cfg.max_pos)
			return err_set(err, "prompt %d: %d tokens, more than the model's context of %d", i, lens[i],
				       m->cfg.max_pos);
	}
	const int batch = o->batch > 1 ? o->batch : 1;
	for (int first = 0; first < n; first += batch)
		if (generate_group(m, tk, prompts, lens, first, n - first < batch ? n - first : batch, o, results,
				   err) < 0) {
			for (int i = 0; i < n; i++)
				gen_result_free(&results[i]);
			return -1;
		}
	return 0;
}

void gen_result_free(struct gen_result *r)
{
	if (!r)
		return;
	free(r->ids);
	free(r->text);
	memset(r, 0, sizeof *r);
}

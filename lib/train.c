/* train: one micro-batch of LoRA training (see train.h).
 *
 * Per layer, x[n × dim] the residual stream, the forward is lib/forward.c's:
 *   h1 = norm(x); q, k, v = proj(h1) (q_raw, k_raw before their norm)
 *   q, k = rope(norm(q_raw), norm(k_raw)); att = attention(q, k, v)
 *   o = proj(att); x_mid = x + norm(o)
 *   h2 = norm(x_mid); gate, up = proj(h2); hact = act(gate)·up
 *   dn = proj(hact); x_out = x_mid + norm(dn)
 * where proj(u) = u·Wᵀ (+ bias) + scale·(drop(u)·Aᵀ)·Bᵀ and lr = drop(u)·Aᵀ
 * is kept. The backward walks it in reverse; for each adapted projection
 * with output gradient dy[n × out]:
 *   gB += scale·dyᵀ·lr;  t = dy·B [n × rank];  gA += scale·tᵀ·drop(u);
 *   du += dy·W + scale·drop'(t·A)
 * (drop' multiplies by the same mask). The logits are computed only for the
 * learned rows, logit_rows at a time, and turned into their gradient in
 * place (backend cross_entropy).
 */
#include "train.h"

#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "rng.h"

/* The activations of one layer (all n × width). */
struct layer_acts {
	float *x;             /* dim: the layer's input */
	float *h1;            /* dim: attn_norm(x) */
	float *q_raw, *k_raw; /* q_dim, kv_dim: before the q/k norms; qk_norm only */
	float *q, *k, *v;     /* q_dim, kv_dim, kv_dim: q, k after RoPE */
	float *att;           /* q_dim: attention output */
	float *o;             /* dim: o's output before post_attn_norm; sandwich only */
	float *x_mid;         /* dim: x after the attention block */
	float *h2;            /* dim: ffn_norm(x_mid) */
	float *gate, *up;     /* ffn: before the GLU */
	float *hact;          /* ffn: act(gate)·up */
	float *dn;            /* dim: down's output before post_ffn_norm; sandwich only */
	float *lr[LORA_N_TARGETS]; /* rank: drop(u)·Aᵀ; adapted projections only */
};

struct trainer {
	const struct model *m;
	struct lora *lo;
	int max_n, ckpt, logit_rows;
	int q_dim, kv_dim, widest; /* widest: max(dim, q_dim, ffn) */
	struct layer_acts *layers; /* n_layers; with checkpointing only .x is set */
	struct layer_acts work;    /* checkpointing: the layer being recomputed */
	float *x_final;            /* n × dim: the last layer's output */
	float *x_scratch;          /* n × dim: a recomputed layer's output (checkpointing) */
	/* gradients of activations */
	float *dx, *d_tmp, *d_h;   /* n × dim */
	float *d_att, *dq, *dq2;   /* n × q_dim */
	float *dk, *dk2, *dv;      /* n × kv_dim */
	float *d_hact, *d_up;      /* n × ffn (d_hact becomes d_gate) */
	/* LoRA scratch */
	float *ly;                 /* n × widest: lr·Bᵀ in the forward, t·A in the backward */
	float *xd;                 /* n × widest: drop(u) */
	float *lt;                 /* n × rank: t = dy·B */
	/* head */
	float *hf;                 /* n × dim: final_norm(x_final) */
	float *hc, *dhc;           /* logit_rows × dim: gathered learned rows, their gradient */
	float *lg, *dlg;           /* logit_rows × vocab */
	int32_t *pos, *kidx, *first, *target, *rows; /* n each */
	float *inv_global, *inv_local;               /* head_dim / 2 each */
	void *mem;
	size_t bytes;
	/* the current batch */
	int n, packed;
	uint64_t seed;
	float dropout;
};

/* ---- memory: one allocation, carved twice (sizes, then pointers) ---- */

struct carver {
	char *base;
	size_t off;
};

static void *carve(struct carver *c, size_t bytes)
{
	void *p = c->base ? c->base + c->off : NULL;
	c->off += (bytes + 63) / 64 * 64;
	return p;
}

#define CARVE_F(c, count) ((float *)carve(c, (size_t)(count) * sizeof(float)))

/* what carve_layer gives a layer_acts: all, only x (checkpointing), all but x
 * (the recomputed layer, whose x is the kept input) */
enum { ACTS_ALL, ACTS_X, ACTS_NO_X };

static void carve_layer(struct carver *c, const struct trainer *tr, struct layer_acts *a, int what)
{
	const struct model_config *mc = &tr->m->cfg;
	const size_t n = (size_t)tr->max_n, dim = (size_t)mc->dim, qd = (size_t)tr->q_dim, kvd = (size_t)tr->kv_dim;
	const size_t ffn = (size_t)mc->ffn;
	memset(a, 0, sizeof *a);
	if (what != ACTS_NO_X)
		a->x = CARVE_F(c, n * dim);
	if (what == ACTS_X)
		return;
	a->h1 = CARVE_F(c, n * dim);
	if (mc->qk_norm) {
		a->q_raw = CARVE_F(c, n * qd);
		a->k_raw = CARVE_F(c, n * kvd);
	}
	a->q = CARVE_F(c, n * qd);
	a->k = CARVE_F(c, n * kvd);
	a->v = CARVE_F(c, n * kvd);
	a->att = CARVE_F(c, n * qd);
	if (mc->sandwich_norm) {
		a->o = CARVE_F(c, n * dim);
		a->dn = CARVE_F(c, n * dim);
	}
	a->x_mid = CARVE_F(c, n * dim);
	a->h2 = CARVE_F(c, n * dim);
	a->gate = CARVE_F(c, n * ffn);
	a->up = CARVE_F(c, n * ffn);
	a->hact = CARVE_F(c, n * ffn);
	for (int t = 0; t < LORA_N_TARGETS; t++) {
		int adapted = 0; /* in any layer: the buffers serve every layer */
		for (int l = 0; l < mc->n_layers; l++)
			adapted |= tr->lo->pairs[l][t].a != NULL;
		if (adapted)
			a->lr[t] = CARVE_F(c, n * (size_t)tr->lo->cfg.rank);
	}
}

static void carve_all(struct carver *c, struct trainer *tr)
{
	const struct model_config *mc = &tr->m->cfg;
	const size_t n = (size_t)tr->max_n, dim = (size_t)mc->dim, qd = (size_t)tr->q_dim, kvd = (size_t)tr->kv_dim;
	const size_t ffn = (size_t)mc->ffn, r = (size_t)tr->lo->cfg.rank, rows = (size_t)tr->logit_rows;
	for (int l = 0; l < mc->n_layers; l++)
		carve_layer(c, tr, &tr->layers[l], tr->ckpt ? ACTS_X : ACTS_ALL);
	if (tr->ckpt)
		carve_layer(c, tr, &tr->work, ACTS_NO_X);
	tr->x_final = CARVE_F(c, n * dim);
	if (tr->ckpt)
		tr->x_scratch = CARVE_F(c, n * dim);
	tr->dx = CARVE_F(c, n * dim);
	tr->d_tmp = CARVE_F(c, n * dim);
	tr->d_h = CARVE_F(c, n * dim);
	tr->d_att = CARVE_F(c, n * qd);
	tr->dq = CARVE_F(c, n * qd);
	tr->dq2 = CARVE_F(c, n * qd);
	tr->dk = CARVE_F(c, n * kvd);
	tr->dk2 = CARVE_F(c, n * kvd);
	tr->dv = CARVE_F(c, n * kvd);
	tr->d_hact = CARVE_F(c, n * ffn);
	tr->d_up = CARVE_F(c, n * ffn);
	tr->ly = CARVE_F(c, n * (size_t)tr->widest);
	tr->xd = CARVE_F(c, n * (size_t)tr->widest);
	tr->lt = CARVE_F(c, n * r);
	tr->hf = CARVE_F(c, n * dim);
	tr->hc = CARVE_F(c, rows * dim);
	tr->dhc = CARVE_F(c, rows * dim);
	tr->lg = CARVE_F(c, rows * (size_t)mc->vocab);
	tr->dlg = CARVE_F(c, rows * (size_t)mc->vocab);
	tr->pos = carve(c, n * sizeof(int32_t));
	tr->kidx = carve(c, n * sizeof(int32_t));
	tr->first = carve(c, n * sizeof(int32_t));
	tr->target = carve(c, n * sizeof(int32_t));
	tr->rows = carve(c, n * sizeof(int32_t));
	tr->inv_global = CARVE_F(c, (size_t)mc->head_dim / 2 + 1);
	tr->inv_local = CARVE_F(c, (size_t)mc->head_dim / 2 + 1);
}

struct trainer *trainer_new(const struct model *m, struct lora *lo, int max_tokens, const struct train_opts *o,
			    struct err *err)
{
	const struct model_config *mc = &m->cfg;
	if (max_tokens <= 0)
		return err_set(err, "train: max_tokens %d is not positive", max_tokens), NULL;
	if (!lo || lo->n_layers != mc->n_layers)
		return err_set(err, "train: the adapter has %d layers, the model %d", lo ? lo->n_layers : 0,
			       mc->n_layers),
		       NULL;
	const int qd = mc->n_heads * mc->head_dim, kvd = mc->n_kv_heads * mc->head_dim;
	for (int l = 0; l < mc->n_layers; l++)
		for (int t = 0; t < LORA_N_TARGETS; t++) {
			const struct lora_pair *p = &lo->pairs[l][t];
			/* in × out of projection t: q, k, v, gate, up read dim; o reads
			 * q_dim, down ffn */
			const int in[LORA_N_TARGETS] = {mc->dim, mc->dim, mc->dim, qd, mc->dim, mc->dim, mc->ffn};
			const int out[LORA_N_TARGETS] = {qd, kvd, kvd, mc->dim, mc->ffn, mc->ffn, mc->dim};
			if (p->a && (p->in != in[t] || p->out != out[t]))
				return err_set(err, "train: the adapter's %s of layer %d is %d × %d, "
						    "the model's %d × %d",
					       lora_target_name(t), l, p->out, p->in, out[t], in[t]),
				       NULL;
		}
	if (lora_alloc_grads(lo, err) < 0)
		return NULL;
	struct trainer *tr = calloc(1, sizeof *tr);
	if (!tr)
		return err_sys(err, "train:"), NULL;
	tr->m = m;
	tr->lo = lo;
	tr->max_n = max_tokens;
	tr->ckpt = o && o->checkpointing;
	/* default: ~16 MB of logits per buffer (85 rows of a 49152 vocabulary,
	 * 16 of Gemma's 262144) */
	int rows = (1 << 22) / (mc->vocab > 0 ? mc->vocab : 1);
	tr->logit_rows = o && o->logit_rows > 0 ? o->logit_rows : rows < 8 ? 8 : rows > 256 ? 256 : rows;
	if (tr->logit_rows > max_tokens)
		tr->logit_rows = max_tokens;
	tr->q_dim = qd;
	tr->kv_dim = kvd;
	tr->widest = mc->dim > qd ? mc->dim : qd;
	if (mc->ffn > tr->widest)
		tr->widest = mc->ffn;
	tr->layers = calloc((size_t)mc->n_layers, sizeof *tr->layers);
	if (!tr->layers) {
		free(tr);
		return err_sys(err, "train:"), NULL;
	}
	struct carver c = {NULL, 0};
	carve_all(&c, tr);
	tr->bytes = c.off;
	c.base = aligned_alloc(64, c.off);
	if (!c.base) {
		err_sys(err, "train: %zu MB of activations for %d tokens:", c.off >> 20, max_tokens);
		trainer_free(tr);
		return NULL;
	}
	tr->mem = c.base;
	c.off = 0;
	carve_all(&c, tr);
	const int hd = mc->head_dim;
	rope_inv_freq(&mc->rope, hd, tr->inv_global);
	rope_inv_freq(mc->rope_local.theta > 0 ? &mc->rope_local : &mc->rope, hd, tr->inv_local);
	return tr;
}

void trainer_free(struct trainer *tr)
{
	if (!tr)
		return;
	free(tr->mem);
	free(tr->layers);
	free(tr);
}

size_t trainer_bytes(const struct trainer *tr) { return tr->bytes; }

/* ---- the batch ---- */

static int batch_check(const struct train_batch *b, int max_n, int vocab, struct err *err)
{
	if (b->n <= 0 || b->n > max_n)
		return err_set(err, "train: %d tokens in a batch (1 .. %d)", b->n, max_n);
	int ne = b->n_examples > 0 ? b->n_examples : 1;
	if (b->starts) {
		if (b->starts[0] != 0)
			return err_set(err, "train: the first example starts at %d, not 0", (int)b->starts[0]);
		for (int e = 1; e < ne; e++)
			if (b->starts[e] <= b->starts[e - 1] || b->starts[e] >= b->n)
				return err_set(err, "train: example %d starts at %d (after %d, before %d expected)", e,
					       (int)b->starts[e], (int)b->starts[e - 1], b->n);
	} else if (ne != 1) {
		return err_set(err, "train: %d examples without their starts", ne);
	}
	for (int t = 0; t < b->n; t++) {
		if (b->tokens[t] < 0 || b->tokens[t] >= vocab)
			return err_set(err, "train: token %d (position %d) is outside the vocabulary of %d",
				       (int)b->tokens[t], t, vocab);
		if (b->labels && b->labels[t] >= vocab)
			return err_set(err, "train: label %d (position %d) is outside the vocabulary of %d",
				       (int)b->labels[t], t, vocab);
	}
	return 0;
}

/* calls fn(lo, hi) for each example's tokens [lo, hi) */
#define FOR_EXAMPLES(b, lo, hi)                                                                          \
	for (int e_ = 0, ne_ = (b)->starts && (b)->n_examples > 1 ? (b)->n_examples : 1, lo = 0, hi = 0; \
	     e_ < ne_ && ((lo = ne_ > 1 ? (b)->starts[e_] : 0),                                          \
			  (hi = e_ + 1 < ne_ ? (b)->starts[e_ + 1] : (b)->n), 1);                        \
	     e_++)

int64_t train_batch_learned(const struct train_batch *b)
{
	int64_t count = 0;
	FOR_EXAMPLES(b, lo, hi)
	for (int t = lo + 1; t < hi; t++)
		count += b->labels[t] >= 0;
	return count;
}

/* positions, key indices, first keys and shifted targets of the batch */
static void batch_setup(struct trainer *tr, const struct train_batch *b)
{
	tr->n = b->n;
	tr->packed = b->starts && b->n_examples > 1;
	FOR_EXAMPLES(b, lo, hi)
	for (int t = lo; t < hi; t++) {
		tr->pos[t] = t - lo;
		tr->kidx[t] = t;
		tr->first[t] = lo;
		tr->target[t] = t + 1 < hi && b->labels && b->labels[t + 1] >= 0 ? b->labels[t + 1] : -1;
	}
}

/* ---- dropout ---- */

/* y[n × width] = dropout(x) with the mask of (layer, target) in this step:
 * the backend's dropout with a seed of its own drawn from the step's, so the
 * backward pass redraws the same mask. */
static void dropout_apply(const struct trainer *tr, int layer, int target, float *y, const float *x, int width)
{
	uint64_t s = tr->seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)(layer * LORA_N_TARGETS + target + 1));
	backend_cpu.dropout(y, x, tr->n, width, rng_next(&s), tr->dropout);
}

/* ---- forward ---- */

/* y[n × w.rows] = x·Wᵀ (+ bias) + scale·(drop(x)·Aᵀ)·Bᵀ, keeping drop(x)·Aᵀ in
 * lr: forward.c's project(), with dropout */
static void project(struct trainer *tr, int layer, int target, float *y, float *lr, const float *x,
		    const struct weight *w, const float *bias)
{
	const struct backend *be = &backend_cpu;
	const int n = tr->n;
	be->matmul(y, x, w, bias, n);
	const struct lora_pair *p = &tr->lo->pairs[layer][target];
	if (!p->a)
		return;
	const int r = tr->lo->cfg.rank;
	const float *xin = x;
	if (tr->dropout > 0) {
		dropout_apply(tr, layer, target, tr->xd, x, p->in);
		xin = tr->xd;
	}
	struct weight wa = {.fmt = WFMT_F32, .rows = r, .cols = p->in, .f32 = p->a};
	struct weight wb = {.fmt = WFMT_F32, .rows = p->out, .cols = r, .f32 = p->b};
	be->matmul(lr, xin, &wa, NULL, n);
	be->matmul(tr->ly, lr, &wb, NULL, n);
	be->axpy(y, tr->ly, tr->lo->scale, (int64_t)n * p->out);
}

/* Layer l from a->x into x_out, keeping the activations in a. */
static void layer_forward(struct trainer *tr, int l, struct layer_acts *a, float *x_out)
{
	const struct backend *be = &backend_cpu;
	const struct model_config *c = &tr->m->cfg;
	const struct layer_weights *L = &tr->m->layers[l];
	const int n = tr->n, dim = c->dim, hd = c->head_dim;
	const int sliding = c->layer_sliding && c->layer_sliding[l] && c->sliding_window > 0;

	be->rmsnorm(a->h1, a->x, L->attn_norm, n, dim, c->norm_eps, c->norm_plus_one);
	float *q = c->qk_norm ? a->q_raw : a->q, *k = c->qk_norm ? a->k_raw : a->k;
	project(tr, l, LORA_Q, q, a->lr[LORA_Q], a->h1, &L->q, c->qkv_bias ? L->q_bias : NULL);
	project(tr, l, LORA_K, k, a->lr[LORA_K], a->h1, &L->k, c->qkv_bias ? L->k_bias : NULL);
	project(tr, l, LORA_V, a->v, a->lr[LORA_V], a->h1, &L->v, c->qkv_bias ? L->v_bias : NULL);
	if (c->qk_norm) {
		be->rmsnorm(a->q, a->q_raw, L->q_norm, n * c->n_heads, hd, c->norm_eps, c->norm_plus_one);
		be->rmsnorm(a->k, a->k_raw, L->k_norm, n * c->n_kv_heads, hd, c->norm_eps, c->norm_plus_one);
	}
	const float *inv = sliding ? tr->inv_local : tr->inv_global;
	be->rope(a->q, n, c->n_heads, hd, tr->pos, inv);
	be->rope(a->k, n, c->n_kv_heads, hd, tr->pos, inv);
	be->attention(a->att, a->q, a->k, a->v, n, n, tr->packed ? tr->kidx : tr->pos, tr->packed ? tr->first : NULL,
		      c->n_heads, c->n_kv_heads, hd, c->attn_scale, sliding ? c->sliding_window : 0, c->attn_softcap);
	float *o = c->sandwich_norm ? a->o : a->x_mid;
	project(tr, l, LORA_O, o, a->lr[LORA_O], a->att, &L->o, NULL);
	if (c->sandwich_norm)
		be->rmsnorm(a->x_mid, a->o, L->post_attn_norm, n, dim, c->norm_eps, c->norm_plus_one);
	/* x_mid = x + block (the forward's x += h: the same sum) */
	be->axpy(a->x_mid, a->x, 1, (int64_t)n * dim);

	be->rmsnorm(a->h2, a->x_mid, L->ffn_norm, n, dim, c->norm_eps, c->norm_plus_one);
	project(tr, l, LORA_GATE, a->gate, a->lr[LORA_GATE], a->h2, &L->gate, NULL);
	project(tr, l, LORA_UP, a->up, a->lr[LORA_UP], a->h2, &L->up, NULL);
	be->glu(a->hact, a->gate, a->up, (int64_t)n * c->ffn, c->act);
	float *dn = c->sandwich_norm ? a->dn : x_out;
	project(tr, l, LORA_DOWN, dn, a->lr[LORA_DOWN], a->hact, &L->down, NULL);
	if (c->sandwich_norm)
		be->rmsnorm(x_out, a->dn, L->post_ffn_norm, n, dim, c->norm_eps, c->norm_plus_one);
	be->axpy(x_out, a->x_mid, 1, (int64_t)n * dim);
}

static void forward_layers(struct trainer *tr, const struct train_batch *b)
{
	const struct model_config *c = &tr->m->cfg;
	backend_cpu.embed(tr->layers[0].x, &tr->m->embed, b->tokens, b->n, c->embed_scale);
	for (int l = 0; l < c->n_layers; l++) {
		float *x_out = l + 1 < c->n_layers ? tr->layers[l + 1].x : tr->x_final;
		if (tr->ckpt) {
			tr->work.x = tr->layers[l].x;
			layer_forward(tr, l, &tr->work, x_out);
		} else {
			layer_forward(tr, l, &tr->layers[l], x_out);
		}
	}
	backend_cpu.rmsnorm(tr->hf, tr->x_final, tr->m->final_norm, b->n, c->dim, c->norm_eps, c->norm_plus_one);
}

static const struct weight *out_weight(const struct model *m)
{
	return m->cfg.tied_embeddings ? &m->embed : &m->lm_head;
}

int train_logits(struct trainer *tr, const struct train_batch *b, float *logits, struct err *err)
{
	const struct model_config *c = &tr->m->cfg;
	if (batch_check(b, tr->max_n, c->vocab, err) < 0)
		return -1;
	batch_setup(tr, b);
	tr->dropout = 0;
	tr->seed = 0;
	forward_layers(tr, b);
	backend_cpu.matmul(logits, tr->hf, out_weight(tr->m), NULL, b->n);
	if (c->final_softcap > 0)
		backend_cpu.softcap(logits, (int64_t)b->n * c->vocab, c->final_softcap);
	return 0;
}

/* ---- backward ---- */

/* The gradient through project(): du (+)= dy·W (+ the LoRA path), and the
 * LoRA pair's gradients accumulated. u is the projection's input. */
static void project_dx(struct trainer *tr, int layer, int target, float *du, int accumulate, const float *dy,
		       const float *u, const float *lr, const struct weight *w)
{
	const struct backend *be = &backend_cpu;
	const int n = tr->n;
	be->matmul_dx(du, dy, w, n, accumulate);
	const struct lora_pair *p = &tr->lo->pairs[layer][target];
	if (!p->a)
		return;
	const int r = tr->lo->cfg.rank;
	const float scale = tr->lo->scale;
	const int64_t count = (int64_t)n * p->in;
	/* gB[out × r] += scale·dyᵀ·lr; t[n × r] = dy·B */
	be->gemm(p->gb, dy, lr, p->out, r, n, 1, 0, scale, 1);
	be->gemm(tr->lt, dy, p->b, n, r, p->out, 0, 0, 1, 0);
	const float *xin = u;
	if (tr->dropout > 0) {
		dropout_apply(tr, layer, target, tr->xd, u, p->in);
		xin = tr->xd;
	}
	/* gA[r × in] += scale·tᵀ·drop(u); du += drop'(scale·t·A) */
	be->gemm(p->ga, tr->lt, xin, r, p->in, n, 1, 0, scale, 1);
	be->gemm(tr->ly, tr->lt, p->a, n, p->in, r, 0, 0, scale, 0);
	if (tr->dropout > 0) /* the same mask on the gradient */
		dropout_apply(tr, layer, target, tr->ly, tr->ly, p->in);
	be->axpy(du, tr->ly, 1, count);
}

/* tr->dx: the gradient w.r.t. layer l's output in, w.r.t. its input out. */
static void layer_backward(struct trainer *tr, int l, const struct layer_acts *a)
{
	const struct backend *be = &backend_cpu;
	const struct model_config *c = &tr->m->cfg;
	const struct layer_weights *L = &tr->m->layers[l];
	const int n = tr->n, dim = c->dim, hd = c->head_dim;
	const int sliding = c->layer_sliding && c->layer_sliding[l] && c->sliding_window > 0;

	/* feed-forward block: x_out = x_mid + norm(down(hact)) */
	const float *d_dn = tr->dx;
	if (c->sandwich_norm) {
		be->rmsnorm_dx(tr->d_tmp, tr->dx, a->dn, L->post_ffn_norm, n, dim, c->norm_eps, c->norm_plus_one, 0);
		d_dn = tr->d_tmp;
	}
	project_dx(tr, l, LORA_DOWN, tr->d_hact, 0, d_dn, a->hact, a->lr[LORA_DOWN], &L->down);
	be->glu_dx(tr->d_hact, tr->d_up, tr->d_hact, a->gate, a->up, (int64_t)n * c->ffn, c->act);
	project_dx(tr, l, LORA_GATE, tr->d_h, 0, tr->d_hact, a->h2, a->lr[LORA_GATE], &L->gate);
	project_dx(tr, l, LORA_UP, tr->d_h, 1, tr->d_up, a->h2, a->lr[LORA_UP], &L->up);
	be->rmsnorm_dx(tr->dx, tr->d_h, a->x_mid, L->ffn_norm, n, dim, c->norm_eps, c->norm_plus_one, 1);

	/* attention block: x_mid = x + norm(o(attention(q, k, v))) */
	const float *d_o = tr->dx;
	if (c->sandwich_norm) {
		be->rmsnorm_dx(tr->d_tmp, tr->dx, a->o, L->post_attn_norm, n, dim, c->norm_eps, c->norm_plus_one, 0);
		d_o = tr->d_tmp;
	}
	project_dx(tr, l, LORA_O, tr->d_att, 0, d_o, a->att, a->lr[LORA_O], &L->o);
	be->attention_dx(tr->dq, tr->dk, tr->dv, tr->d_att, a->q, a->k, a->v, n, n, tr->packed ? tr->kidx : tr->pos,
			 tr->packed ? tr->first : NULL, c->n_heads, c->n_kv_heads, hd, c->attn_scale,
			 sliding ? c->sliding_window : 0, c->attn_softcap);
	const float *inv = sliding ? tr->inv_local : tr->inv_global;
	be->rope_dx(tr->dq, n, c->n_heads, hd, tr->pos, inv);
	be->rope_dx(tr->dk, n, c->n_kv_heads, hd, tr->pos, inv);
	const float *dq = tr->dq, *dk = tr->dk;
	if (c->qk_norm) {
		be->rmsnorm_dx(tr->dq2, tr->dq, a->q_raw, L->q_norm, n * c->n_heads, hd, c->norm_eps, c->norm_plus_one,
			       0);
		be->rmsnorm_dx(tr->dk2, tr->dk, a->k_raw, L->k_norm, n * c->n_kv_heads, hd, c->norm_eps,
			       c->norm_plus_one, 0);
		dq = tr->dq2, dk = tr->dk2;
	}
	project_dx(tr, l, LORA_Q, tr->d_h, 0, dq, a->h1, a->lr[LORA_Q], &L->q);
	project_dx(tr, l, LORA_K, tr->d_h, 1, dk, a->h1, a->lr[LORA_K], &L->k);
	project_dx(tr, l, LORA_V, tr->d_h, 1, tr->dv, a->h1, a->lr[LORA_V], &L->v);
	be->rmsnorm_dx(tr->dx, tr->d_h, a->x, L->attn_norm, n, dim, c->norm_eps, c->norm_plus_one, 1);
}

/* Loss of the learned rows and, when backward, tr->dx = its gradient
 * w.r.t. x_final (times grad_scale). */
static double head(struct trainer *tr, int backward, float grad_scale, int64_t *n_learned)
{
	const struct backend *be = &backend_cpu;
	const struct model_config *c = &tr->m->cfg;
	const int n = tr->n, dim = c->dim, V = c->vocab;
	const struct weight *w = out_weight(tr->m);
	int nr = 0;
	for (int t = 0; t < n; t++)
		if (tr->target[t] >= 0)
			tr->rows[nr++] = t;
	*n_learned = nr;
	if (backward)
		memset(tr->d_h, 0, (size_t)n * dim * sizeof *tr->d_h);
	double loss = 0;
	int32_t tgt[1024];
	for (int r0 = 0; r0 < nr; r0 += tr->logit_rows) {
		int m = nr - r0 < tr->logit_rows ? nr - r0 : tr->logit_rows;
		const size_t row_bytes = (size_t)dim * sizeof(float);
		for (int i = 0; i < m; i++)
			memcpy(tr->hc + (size_t)i * dim, tr->hf + (size_t)tr->rows[r0 + i] * dim, row_bytes);
		be->matmul(tr->lg, tr->hc, w, NULL, m);
		if (c->final_softcap > 0)
			be->softcap(tr->lg, (int64_t)m * V, c->final_softcap);
		/* targets of this chunk, in pieces of the stack buffer */
		for (int i0 = 0; i0 < m; i0 += 1024) {
			int k = m - i0 < 1024 ? m - i0 : 1024;
			for (int i = 0; i < k; i++)
				tgt[i] = tr->target[tr->rows[r0 + i0 + i]];
			loss += be->cross_entropy(tr->dlg + (size_t)i0 * V, tr->lg + (size_t)i0 * V, tgt, k, V,
						  grad_scale);
		}
		if (!backward)
			continue;
		if (c->final_softcap > 0)
			be->softcap_dx(tr->dlg, tr->lg, (int64_t)m * V, c->final_softcap);
		be->matmul_dx(tr->dhc, tr->dlg, w, m, 0);
		for (int i = 0; i < m; i++)
			memcpy(tr->d_h + (size_t)tr->rows[r0 + i] * dim, tr->dhc + (size_t)i * dim, row_bytes);
	}
	if (backward)
		be->rmsnorm_dx(tr->dx, tr->d_h, tr->x_final, tr->m->final_norm, n, dim, c->norm_eps, c->norm_plus_one,
			       0);
	return loss;
}

int train_step(struct trainer *tr, const struct train_batch *b, float grad_scale, uint64_t dropout_seed,
	       struct train_result *res, float *d_embed, struct err *err)
{
	const struct model_config *c = &tr->m->cfg;
	if (batch_check(b, tr->max_n, c->vocab, err) < 0)
		return -1;
	if (!b->labels)
		return err_set(err, "train: a batch without labels");
	batch_setup(tr, b);
	tr->dropout = tr->lo->cfg.dropout;
	tr->seed = dropout_seed;
	forward_layers(tr, b);
	int64_t n_learned;
	double loss = head(tr, 1, grad_scale, &n_learned);
	for (int l = c->n_layers - 1; l >= 0; l--) {
		if (tr->ckpt) {
			tr->work.x = tr->layers[l].x;
			layer_forward(tr, l, &tr->work, tr->x_scratch);
			layer_backward(tr, l, &tr->work);
		} else {
			layer_backward(tr, l, &tr->layers[l]);
		}
	}
	if (d_embed)
		memcpy(d_embed, tr->dx, (size_t)b->n * c->dim * sizeof *d_embed);
	res->loss_sum = loss;
	res->n_learned = n_learned;
	if (loss != loss)
		return err_sys(err, "train: the loss is NaN (out of memory in an op, or a diverged adapter)");
	return 0;
}

int train_eval(struct trainer *tr, const struct train_batch *b, struct train_result *res, struct err *err)
{
	const struct model_config *c = &tr->m->cfg;
	if (batch_check(b, tr->max_n, c->vocab, err) < 0)
		return -1;
	if (!b->labels)
		return err_set(err, "train: a batch without labels");
	batch_setup(tr, b);
	tr->dropout = 0;
	tr->seed = 0;
	forward_layers(tr, b);
	int64_t n_learned;
	double loss = head(tr, 0, 0.0f, &n_learned);
	res->loss_sum = loss;
	res->n_learned = n_learned;
	if (loss != loss)
		return err_sys(err, "train: the loss is NaN (out of memory in an op, or a diverged adapter)");
	return 0;
}

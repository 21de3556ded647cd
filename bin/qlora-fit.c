/* qlora-fit — train a LoRA adapter (QLoRA: NF4 frozen weights) on a token stream.
 *
 *   qlora-fit --model M --data train.tok.zst --out adapter/
 *
 * Only wiring lives here: options (and --config FILE.json) into struct
 * fit_settings; the run is lib/fit.c.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fit.h"
#include "jsonl.h"
#include "lora.h"
#include "msg.h"
#include "opt.h"

#define QLORAFIT_VERSION "0.1.0"

static const struct opt opts[] = {
	{"model", 'm', OPT_STRING, "M", "model folder (config.json, safetensors) or GGUF file"},
	{"data", 'd', OPT_STRING, "FILE", "training token stream (*.tok.zst, from tok)"},
	{"out", 'o', OPT_STRING, "DIR", "output folder: the adapter, training_args.json, log.jsonl, checkpoints"},
	{"epochs", 0, OPT_INT, "N", "passes over the training data (default 1)", .min = 1, .max = 1000000},
	{"max-steps", 0, OPT_INT, "N", "optimizer steps; when given it wins over --epochs", .min = 1,
	 .max = INT32_MAX},
	{"lr", 0, OPT_FLOAT, "X", "peak learning rate (default 2e-4)", .fmin = 1e-12, .fmax = 10},
	{"scheduler", 0, OPT_CHOICE, "KIND",
	 "learning-rate schedule: cosine (default), linear, constant or cosine_with_min_lr",
	 .choices = "cosine|linear|constant|cosine_with_min_lr"},
	{"warmup-steps", 0, OPT_INT, "N", "linear warm-up steps (default 0)", .min = 0, .max = INT32_MAX},
	{"warmup-ratio", 0, OPT_FLOAT, "F", "warm-up as a share of the steps, rounded up", .fmin = 0, .fmax = 1},
	{"min-lr-ratio", 0, OPT_FLOAT, "F", "cosine_with_min_lr: the floor as a share of --lr (default 0.1)",
	 .fmin = 0, .fmax = 1},
	{"weight-decay", 0, OPT_FLOAT, "W", "AdamW decoupled weight decay (default 0)", .fmin = 0, .fmax = 10},
	{"max-grad-norm", 0, OPT_FLOAT, "G", "clip the gradient's global norm to G (default 1; 0: no clipping)",
	 .fmin = 0, .fmax = 1e30},
	{"adam-beta1", 0, OPT_FLOAT, "B", "AdamW beta1 (default 0.9)", .fmin = 0, .fmax = 0.999999999},
	{"adam-beta2", 0, OPT_FLOAT, "B", "AdamW beta2 (default 0.999)", .fmin = 0, .fmax = 0.999999999},
	{"adam-eps", 0, OPT_FLOAT, "E", "AdamW epsilon (default 1e-8)", .fmin = 1e-30, .fmax = 1},
	{"rank", 'r', OPT_INT, "R", "LoRA rank (default 16)", .min = 1, .max = 65536},
	{"alpha", 0, OPT_FLOAT, "A", "LoRA alpha: the update is scaled by alpha/rank (default 32)", .fmin = 1e-9,
	 .fmax = 1e9},
	{"dropout", 0, OPT_FLOAT, "P", "LoRA dropout on the input of A (default 0.05)", .fmin = 0,
	 .fmax = 0.999999},
	{"rslora", 0, OPT_FLAG, NULL, "scale by alpha/sqrt(rank) (rsLoRA)"},
	{"target", 0, OPT_STRING, "LIST",
	 "adapted projections: q,k,v,o,gate,up,down (or q_proj ...), or all-linear (default)"},
	{"init-adapter", 0, OPT_STRING, "DIR",
	 "start from this PEFT adapter folder (its rank, alpha, targets, rslora) instead of a fresh one"},
	{"seq-len", 0, OPT_INT, "N", "longest row in tokens (default 2048, at most the model's context)", .min = 2,
	 .max = 1 << 22},
	{"batch", 'b', OPT_INT, "N", "rows per micro-batch (default 1)", .min = 1, .max = 1 << 20},
	{"grad-accum", 0, OPT_INT, "N", "micro-batches per optimizer step (default 1)", .min = 1, .max = 1 << 20},
	{"no-packing", 0, OPT_FLAG, NULL, "one example per row instead of packing examples up to --seq-len"},
	{"no-shuffle", 0, OPT_FLAG, NULL, "keep the stream's order in every epoch"},
	{"overflow", 0, OPT_CHOICE, "POLICY", "examples longer than --seq-len: error (default), truncate or drop",
	 .choices = "error|truncate|drop"},
	{"quant", 0, OPT_CHOICE, "Q", "frozen linear weights: nf4 (default), int8, bf16 or none (fp32)",
	 .choices = "nf4|int8|bf16|none"},
	{"val-split", 0, OPT_FLOAT, "F", "hold out this share of the examples for validation", .fmin = 0,
	 .fmax = 0.99},
	{"val", 0, OPT_STRING, "FILE", "validation token stream"},
	{"eval-steps", 0, OPT_INT, "N", "validation loss every N steps (default 0: at each epoch's end)", .min = 0,
	 .max = INT32_MAX},
	{"save-steps", 0, OPT_INT, "N", "a checkpoint every N steps (default 0: only at the end)", .min = 0,
	 .max = INT32_MAX},
	{"logging-steps", 0, OPT_INT, "N", "a log line every N steps (default 1)", .min = 1, .max = INT32_MAX},
	{"checkpointing", 0, OPT_CHOICE, "WHEN",
	 "gradient checkpointing: auto (default: on when activations pass 1 GiB), on or off",
	 .choices = "auto|on|off"},
	{"seed", 0, OPT_INT, "S", "seed of the adapter's initialization, shuffling, split and dropout (default 42)",
	 .min = 0, .max = INT64_MAX},
	{"device", 0, OPT_CHOICE, "DEV", "cpu, cuda or auto (default: cuda when built with it, else cpu)",
	 .choices = "cpu|cuda|auto"},
	{"threads", 0, OPT_INT, "N", "CPU threads (default 0: one per core)", .min = 0, .max = 1024},
	{"resume", 0, OPT_FLAG, NULL, "continue from the newest checkpoint in --out"},
	{"force", 0, OPT_FLAG, NULL,
	 "resume despite different settings or data, reuse a used --out, ignore the memory estimate"},
	{"config", 'c', OPT_STRING, "FILE", "settings as a JSON object of long option names (flags win)"},
	OPT_COMMON_ROWS,
	{0},
};

static const char usage[] = "qlora-fit --model M --data FILE.tok.zst --out DIR [OPTIONS]";
static const char about[] =
	"Trains a LoRA adapter on the token stream FILE (from tok) over the frozen model M, held in NF4\n"
	"(QLoRA) unless --quant says otherwise, with AdamW, a warm-up and cosine or linear schedule,\n"
	"gradient clipping and accumulation, packing, validation, checkpoints and --resume. Writes the\n"
	"PEFT adapter folder DIR (adapter_config.json, adapter_model.safetensors) with training_args.json,\n"
	"log.jsonl, best/ and checkpoint-STEP/. Exit status: 0 done, 1 runtime failure, 2 bad usage or\n"
	"bad input, 130 interrupted (after writing a checkpoint).";

static const struct opt *find_opt(const char *name)
{
	for (const struct opt *o = opts; o->name; o++)
		if (!strcmp(o->name, name) && !o->hidden)
			return o;
	return NULL;
}

/* --config FILE.json: its keys become options placed before argv's, so
 * that the command line's win (the last occurrence of an option counts). */
/* Dies with "FILE:LINE: key "KEY": what", LINE where the key's value is. */
static _Noreturn void config_die(const char *path, const char *text, size_t len, const char *key, const char *what)
{
	char q[300];
	size_t a, b;
	snprintf(q, sizeof q, "\"%s\"", key);
	if (jsonl_locate(text, len, q, &a, &b) == 1)
		msg_die(EXIT_USAGE, "%s:%ld: key \"%s\": %s", path, jsonl_line_at(text, a), key, what);
	msg_die(EXIT_USAGE, "%s: key \"%s\": %s", path, key, what);
}

static char **with_config(const char *path, int argc, char **argv, int *new_argc, int *n_own)
{
	struct err err = {0};
	jv cfg;
	char *text;
	size_t len;
	msg_die_if(jsonl_load_text(path, 1 << 20, &cfg, &text, &len, &err) < 0, &err);
	if (jv_get_kind(cfg) != JV_KIND_OBJECT)
		msg_die(EXIT_USAGE, "%s: expected a JSON object of option names", path);
	int cap = argc + 2 * jv_object_length(jv_copy(cfg)) + 1, n = 0;
	char **av = calloc((size_t)cap, sizeof *av);
	if (!av)
		msg_die(EXIT_RUNTIME, "out of memory");
	av[n++] = argv[0];
	jv_object_foreach(cfg, k, v) {
		const char *key = jv_string_value(k);
		const struct opt *o = find_opt(key);
		if (!o || !strcmp(key, "config") || !strcmp(key, "help") || !strcmp(key, "version"))
			config_die(path, text, len, key, "not an option of qlora-fit");
		char flag[128], val[512];
		snprintf(flag, sizeof flag, "--%s", key);
		jv_kind kind = jv_get_kind(v);
		if (o->type == OPT_FLAG) {
			if (kind != JV_KIND_TRUE && kind != JV_KIND_FALSE)
				config_die(path, text, len, key, "expected true or false");
			if (kind == JV_KIND_TRUE)
				av[n++] = strdup(flag);
		} else {
			if (kind == JV_KIND_NUMBER) {
				double d = jv_number_value(v);
				if (d == (double)(long long)d)
					snprintf(val, sizeof val, "%lld", (long long)d);
				else
					snprintf(val, sizeof val, "%.17g", d);
			} else if (kind == JV_KIND_STRING) {
				snprintf(val, sizeof val, "%s", jv_string_value(v));
			} else if (kind == JV_KIND_ARRAY && !strcmp(key, "target")) {
				val[0] = 0;
				jv_array_foreach(v, i, t) {
					if (jv_get_kind(t) != JV_KIND_STRING)
						config_die(path, text, len, key, "expected names");
					snprintf(val + strlen(val), sizeof val - strlen(val), "%s%s", i ? "," : "",
						 jv_string_value(t));
					jv_free(t);
				}
			} else {
				config_die(path, text, len, key,
					   o->type == OPT_STRING || o->type == OPT_CHOICE ? "expected a string" : "expected a number");
			}
			av[n++] = strdup(flag);
			av[n++] = strdup(val);
		}
		jv_free(k);
		jv_free(v);
	}
	jv_free(cfg);
	free(text);
	*n_own = n; /* av[1 .. n) are ours to free */
	for (int i = 1; i < argc; i++)
		av[n++] = argv[i];
	*new_argc = n;
	return av;
}

static int given(const struct opt_result *r, const char *name)
{
	for (int i = 0; i < r->nseen; i++)
		if (!strcmp(r->seen[i].opt->name, name))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	struct opt_result r;
	int status = opt_start(opts, argc, argv, usage, about, QLORAFIT_VERSION, &r);
	if (status >= 0)
		return status;
	struct err err = {0};
	const char *config = opt_str(&r, "config", NULL);
	char **av = NULL;
	int n_own = 0;
	if (config) {
		int n;
		av = with_config(config, argc, argv, &n, &n_own);
		if (opt_parse(opts, n, av, &r, &err) < 0)
			msg_die(EXIT_USAGE, "%s (with --config %s; try --help)", err.msg, config);
	}
	if (r.nargs > 0)
		msg_die(EXIT_USAGE, "unexpected argument '%s' (the data is --data FILE; try --help)", r.args[0]);
	const char *need[] = {"model", "data", "out"};
	for (int i = 0; i < 3; i++)
		if (!opt_str(&r, need[i], NULL))
			msg_die(EXIT_USAGE, "--%s is required (try --help)", need[i]);

	struct fit_settings s;
	fit_settings_default(&s);
	s.model = opt_str(&r, "model", NULL);
	s.data = opt_str(&r, "data", NULL);
	s.out = opt_str(&r, "out", NULL);
	s.val_file = opt_str(&r, "val", NULL);
	s.init_adapter = opt_str(&r, "init-adapter", NULL);
	s.config_file = config;
	s.epochs = opt_int(&r, "epochs", 1);
	s.max_steps = opt_int(&r, "max-steps", 0);
	s.lr = opt_float(&r, "lr", s.lr);
	const char *sched = opt_str(&r, "scheduler", "cosine");
	if (lr_kind_parse(!strcmp(sched, "constant") ? "constant_with_warmup" : sched, &s.scheduler, &err) < 0)
		msg_die_err(&err);
	s.warmup_steps = opt_int(&r, "warmup-steps", -1);
	s.warmup_ratio = opt_float(&r, "warmup-ratio", 0);
	s.min_lr_ratio = opt_float(&r, "min-lr-ratio", s.min_lr_ratio);
	s.adam.weight_decay = opt_float(&r, "weight-decay", 0);
	s.max_grad_norm = opt_float(&r, "max-grad-norm", s.max_grad_norm);
	s.adam.beta1 = opt_float(&r, "adam-beta1", s.adam.beta1);
	s.adam.beta2 = opt_float(&r, "adam-beta2", s.adam.beta2);
	s.adam.eps = opt_float(&r, "adam-eps", s.adam.eps);
	s.rank = (int)opt_int(&r, "rank", s.rank);
	s.alpha = opt_float(&r, "alpha", s.alpha);
	s.dropout = opt_float(&r, "dropout", s.dropout);
	s.rslora = opt_flag(&r, "rslora") > 0;
	if (lora_targets_parse(opt_str(&r, "target", "all-linear"), &s.targets, &err) < 0)
		msg_die(EXIT_USAGE, "--target: %s", err.msg);
	s.given_rank = given(&r, "rank");
	s.given_alpha = given(&r, "alpha");
	s.given_targets = given(&r, "target");
	s.given_rslora = given(&r, "rslora");
	s.seq_len = (int)opt_int(&r, "seq-len", 0);
	s.batch = (int)opt_int(&r, "batch", 1);
	s.grad_accum = (int)opt_int(&r, "grad-accum", 1);
	s.packing = !opt_flag(&r, "no-packing");
	s.shuffle = !opt_flag(&r, "no-shuffle");
	const char *ov = opt_str(&r, "overflow", "error");
	s.overflow = !strcmp(ov, "truncate") ? FIT_OVERFLOW_TRUNCATE : !strcmp(ov, "drop") ? FIT_OVERFLOW_DROP
											  : FIT_OVERFLOW_ERROR;
	const char *q = opt_str(&r, "quant", "nf4");
	s.quant = !strcmp(q, "none") ? WFMT_F32 : (enum wfmt)wfmt_parse(q);
	s.val_split = opt_float(&r, "val-split", 0);
	s.eval_steps = opt_int(&r, "eval-steps", 0);
	s.save_steps = opt_int(&r, "save-steps", 0);
	s.logging_steps = opt_int(&r, "logging-steps", 1);
	const char *ck = opt_str(&r, "checkpointing", "auto");
	s.checkpointing = !strcmp(ck, "on") ? FIT_CKPT_ON : !strcmp(ck, "off") ? FIT_CKPT_OFF : FIT_CKPT_AUTO;
	s.seed = (uint64_t)opt_int(&r, "seed", 42);
	const char *dev = opt_str(&r, "device", "auto");
	if (!strcmp(dev, "cuda"))
		msg_die(EXIT_USAGE, "--device cuda: this build has no CUDA backend (use --device cpu or auto)");
	s.device = "cpu"; /* auto without a CUDA backend */
	s.threads = (int)opt_int(&r, "threads", 0);
	s.resume = opt_flag(&r, "resume") > 0;
	s.force = opt_flag(&r, "force") > 0;
	s.console = msg_level >= 2 ? stderr : NULL;
	s.progress = opt_progress(&r);

	msg_catch_signals();
	status = fit_run(&s, &err);
	for (int i = 1; i < n_own; i++)
		free(av[i]);
	free(av);
	if (status < 0)
		msg_die_err(&err);
	if (status == FIT_INTERRUPTED)
		msg_error("%s", err.msg);
	return status;
}

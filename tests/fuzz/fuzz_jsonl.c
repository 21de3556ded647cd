/* fuzz_jsonl: any bytes through the JSON Lines reader, reading on past bad
 * lines as --skip-bad does. Every record read is written back with
 * jsonl_write; reading that output again must give every line back byte for
 * byte (the writer's output is always valid JSON Lines, and stable). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsonl.h"

/* Whether v holds an integer the jd keeps whole and a jv (jq's double) may not. */
static int has_exact(const struct jd *v)
{
	uint32_t n = v->kind == JD_ARRAY || v->kind == JD_OBJECT ? v->n : 0;
	for (uint32_t i = 0; i < n; i++)
		if (has_exact(v->kind == JD_ARRAY ? &v->u.items[i] : &v->u.members[i].val))
			return 1;
	return v->kind == JD_NUMBER && v->exact;
}

/* jsonl_next, each line also parsed into a jd with a memo that earlier
 * lines filled: the same result, value and message, and jsonl_put_jd writes
 * the jd as jsonl_put_value writes the jv (where the jd holds no integer
 * a double would round; else as the jv of the jd is written). */
static int next_both(struct jsonl_reader *r, struct jsonl_memo *memo, struct jd_arena *ar, jv *out, struct err *err)
{
	const char *line;
	size_t len;
	int rc = jsonl_next_line(r, &line, &len, err);
	if (rc <= 0)
		return rc;
	struct err e2 = {0};
	struct jd d;
	rc = jsonl_parse_record(jsonl_name(r), jsonl_line(r), line, len, out, err);
	int rc2 = jsonl_parse_record_jd(jsonl_name(r), jsonl_line(r), line, len, memo, ar, &d, &e2);
	if (rc != rc2 || (rc < 0 && strcmp(err->msg, e2.msg)))
		abort();
	if (rc > 0) {
		struct jsonl_buf x = {0}, y = {0};
		jsonl_put_value(&x, jv_copy(*out));
		if (has_exact(&d))
			jsonl_put_value(&y, jsonl_jv_of(&d));
		else
			jsonl_put_jd(&y, &d);
		if (x.n != y.n || memcmp(x.p, y.p, x.n))
			abort(); /* the jd (or the memo) changed a value */
		/* and the jd made of the jv is the same value, as jq's equality
		 * says of two jv made apart (of one jv, jq says equal at once,
		 * even where a NaN is inside) */
		struct jd e;
		if (jsonl_jd_of(*out, ar, &e) < 0 || jd_equal(&d, &e) != jv_equal(jv_copy(*out), jsonl_jv_of(&e)))
			abort();
		free(x.p), free(y.p);
	}
	jd_arena_reset(ar);
	if (rc > 0) { /* compared as text: jv_equal says nan != nan */
		jv a = jv_dump_string(jv_copy(*out), 0);
		/* an accepted line is one jq may be given (no NUL, UTF-8 throughout:
		 * the direct parser leaves those checks to what it reads), and jq's
		 * own parser reads it to the same value (the direct parser's numbers
		 * and \u escapes included) */
		const char *why;
		if (jsonl_unsafe_at(line, len, &why) >= 0)
			abort();
		jv j = jv_parse_sized(line, (int)len);
		if (!jv_is_valid(j))
			abort();
		jv c = jv_dump_string(j, 0);
		if (strcmp(jv_string_value(a), jv_string_value(c)))
			abort();
		jv_free(a), jv_free(c);
	}
	return rc;
}

/* jsonl_locate on the whole input: in bounds, and what it finds is one
 * value; jsonl_locate_start's, parsed as a prefix, is the same where no
 * repeat may follow. */
static void locate(const char *s, size_t n)
{
	static const char *const paths[] = {"", "a", "a[0]", "a.b[1].c", "added_tokens", "\"x y\"[2].k"};
	for (size_t i = 0; i < sizeof paths / sizeof *paths; i++) {
		size_t a = 0, b = 0;
		int rc = jsonl_locate(s, n, paths[i], &a, &b);
		if (rc < -1 || rc > 1 || (rc == 1 && !(a < b && b <= n)))
			abort();
		if (rc == 1 && jsonl_line_at(s, a) < 1)
			abort();
		/* in two steps: where the first member's value starts, the value
		 * parsed as a prefix of the rest: jsonl_locate's answer unless a
		 * repeat may follow */
		size_t fa = 0, used = 0;
		int frc = jsonl_locate_start(s, n, paths[i], &fa);
		if (frc == 1 && fa >= n)
			abort();
		struct jd_arena ar = {0};
		struct jd v;
		if (frc == 1 && jsonl_parse_jd_keep(s + fa, n - fa, NULL, 0, 0, &ar, &v, &used) == 0) {
			size_t fb = fa + used, e = fb;
			if (fb > n)
				abort();
			while (e < n && strchr(" \t\r\n", s[e]) && s[e])
				e++;
			/* the member must end there, as the caller checks */
			int ends = e < n && (s[e] == ',' || s[e] == '}');
			if (ends && !jsonl_key_may_recur(s + fb, n - fb, paths[i]) && (rc != 1 || a != fa || b != fb))
				abort();
		} else if (frc != 1 && rc != frc) {
			abort();
		}
		jd_arena_free(&ar);
	}
	/* the elements of an array, each in bounds and after the last */
	size_t at = 0, a = 0, b = 0, last = 0;
	while (jsonl_array_next(s, n, &at, &a, &b) > 0) {
		if (!(last <= a && a < b && b <= n))
			abort();
		last = b;
	}
	/* the members of an object likewise, and keys that name themselves */
	size_t ka = 0, kb = 0;
	at = 0, last = 0;
	while (jsonl_object_next(s, n, &at, &ka, &kb, &a, &b) > 0) {
		if (!(last <= ka && ka < kb && kb <= a && a < b && b <= n) || s[ka] != '"')
			abort();
		(void)jsonl_key_is(s + ka, kb - ka, "content");
		last = b;
	}
	/* what the check without building takes, the parser takes (it may leave
	 * more to jq, never less) */
	jv whole;
	struct err pe = {0};
	if (jsonl_is_json(s, n)) {
		if (jsonl_parse(s, n, "f", &whole, &pe) < 0)
			abort();
		jv_free(whole);
	}
	/* the parse that builds only some members takes nothing the check
	 * refuses, and everything the direct parser builds whole (it only
	 * builds less) */
	static const char *const keep[] = {"content", "special"};
	int direct = jsonl_is_direct(s, n);
	for (int depth = 1; depth <= 2; depth++) {
		struct jd_arena ar = {0};
		struct jd kd;
		int taken = jsonl_parse_jd_keep(s, n, keep, 2, depth, &ar, &kd, NULL) == 0;
		if ((taken && !jsonl_is_json(s, n)) || (direct && !taken))
			abort();
		/* objects read against the last one of their shape (done for long
		 * texts): what a parse without shapes gives, value and length */
		size_t was = jsonl_shape_min(0), su = 0, nu = 0;
		struct jd sd, nd;
		int sr = jsonl_parse_jd_keep(s, n, keep, 2, depth, &ar, &sd, &su), sj = jsonl_is_json(s, n);
		jsonl_shape_min(SIZE_MAX);
		int nr = jsonl_parse_jd_keep(s, n, keep, 2, depth, &ar, &nd, &nu), nj = jsonl_is_json(s, n);
		jsonl_shape_min(was);
		if (sr != nr || su != nu || sj != nj || (sr == 0 && !jv_equal(jsonl_jv_of(&sd), jsonl_jv_of(&nd))))
			abort();
		/* as a prefix: a value the whole parse of its own bytes builds the same */
		size_t used = 0;
		struct jd pd, wd;
		if (jsonl_parse_jd_keep(s, n, keep, 2, depth, &ar, &pd, &used) == 0) {
			if (used > n || jsonl_parse_jd_keep(s, used, keep, 2, depth, &ar, &wd, NULL) < 0)
				abort();
			jv a = jsonl_jv_of(&pd), b = jsonl_jv_of(&wd);
			if (!jv_equal(a, b))
				abort();
		}
		jd_arena_free(&ar);
	}
	struct err e = {0};
	err_set(&e, "f: a.b[1].c: x");
	jsonl_err_line(&e, "f", s, n);
	if (strncmp(e.msg, "f", 1))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	locate((const char *)data, size);
	if (size == 0)
		return 0; /* fmemopen refuses an empty buffer */
	FILE *in = fmemopen((void *)data, size, "r");
	if (!in)
		return 0;
	struct jsonl_reader *r = jsonl_from_file(in, "fuzz");
	char *buf = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&buf, &len);
	struct err err;
	long nrec = 0, last = 0;
	jv v;
	int rc;
	struct jsonl_memo *memo = jsonl_memo_new();
	struct jd_arena ar = {0};
	while ((rc = next_both(r, memo, &ar, &v, &err)) != 0) {
		/* Line numbers only grow, and every message says where. */
		if (jsonl_line(r) <= last)
			abort();
		last = jsonl_line(r);
		if (rc < 0) {
			char where[32];
			snprintf(where, sizeof where, "fuzz:%ld: ", last);
			if (strncmp(err.msg, where, strlen(where)) != 0)
				abort();
			continue;
		}
		if (jsonl_write(out, v, &err) < 0)
			abort();
		nrec++;
	}
	jsonl_memo_free(memo);
	jd_arena_free(&ar);
	jsonl_close(r);
	fclose(in);
	fclose(out);

	if (len) {
		FILE *again = fmemopen(buf, len, "r");
		struct jsonl_reader *r2 = jsonl_from_file(again, "again");
		const char *line = buf;
		long n2 = 0;
		while ((rc = jsonl_next(r2, &v, &err)) != 0) {
			if (rc < 0)
				abort(); /* what jsonl_write wrote does not read back */
			char *w = NULL;
			size_t k = 0, wcap = 0;
			if (jsonl_format(v, &w, &k, &wcap, &err) < 0)
				abort();
			const char *nl = strchr(line, '\n');
			if (!nl || (size_t)(nl - line) + 1 != k || memcmp(line, w, k) != 0)
				abort(); /* written twice, it came out different */
			free(w);
			line = nl + 1;
			n2++;
		}
		if (n2 != nrec)
			abort();
		jsonl_close(r2);
		fclose(again);
	}
	free(buf);
	return 0;
}

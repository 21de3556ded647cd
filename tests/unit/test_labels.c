/* labels: parsing format-2 records and assigning labels from spans. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "labels.h"
#include "tokstream.h"

static const struct labels_bos nobos = {-1, 0};

static int parse(const char *json, struct labels_record *lr, jv *keep, struct err *err)
{
	*keep = jv_parse(json);
	return labels_parse(*keep, lr, err);
}

static void test_parse_good(void)
{
	struct labels_record lr;
	struct err err = {0};
	jv rec;
	int rc = parse("{\"text\":\"hello world\",\"train\":[[6,11],[0,2],[1,3],[4,4]],\"x\":1}", &lr, &rec, &err);
	CHECK(rc == 0, "parse failed: %s", err.msg);
	if (rc == 0) {
		CHECK(lr.len == 11, "len %zu", lr.len);
		CHECK(lr.nspans == 2, "spans merged and empty dropped: %zu", lr.nspans);
		CHECK(lr.spans[0][0] == 0 && lr.spans[0][1] == 3, "first [%u,%u)", lr.spans[0][0], lr.spans[0][1]);
		CHECK(lr.spans[1][0] == 6 && lr.spans[1][1] == 11, "second [%u,%u)", lr.spans[1][0], lr.spans[1][1]);
	}
	labels_record_free(&lr);
	jv_free(rec);
}

static void test_parse_bad(void)
{
	static const struct {
		const char *json, *msg;
	} cases[] = {
		{"[1]", "expected an object"},
		{"{\"train\":[]}", "missing key \"text\""},
		{"{\"text\":null,\"train\":[]}", "missing key \"text\""},
		{"{\"text\":[1],\"train\":[]}", "key \"text\": expected a string"},
		{"{\"text\":\"ab\"}", "missing key \"train\""},
		{"{\"text\":\"ab\",\"train\":{}}", "key \"train\": expected an array"},
		{"{\"text\":\"ab\",\"train\":[[0,3]]}", "span 0: expected [start,end]"},
		{"{\"text\":\"ab\",\"train\":[[0,1],[-1,1]]}", "span 1: expected [start,end]"},
		{"{\"text\":\"ab\",\"train\":[[0,1,2]]}", "span 0: expected [start,end]"},
		{"{\"text\":\"ab\",\"train\":[[\"0\",1]]}", "span 0: expected [start,end]"},
		{"{\"text\":\"ab\",\"train\":[[1e300,1]]}", "span 0: expected [start,end]"},
		{"{\"text\":\"ab\",\"train\":[[2,1]]}", "span 0 [2,1): start after end"},
		{"{\"text\":\"\xd0\xbf\xd1\x80\",\"train\":[[1,2]]}", "not on a UTF-8 character boundary"},
		{"{\"text\":\"\xd0\xbf\xd1\x80\",\"train\":[[0,3]]}", "not on a UTF-8 character boundary"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct labels_record lr;
		struct err err = {0};
		jv rec;
		int rc = parse(cases[i].json, &lr, &rec, &err);
		CHECK(rc == -1, "case %zu accepted: %s", i, cases[i].json);
		CHECK(rc == 0 || strstr(err.msg, cases[i].msg), "case %zu: message '%s' lacks '%s'", i, err.msg,
		      cases[i].msg);
		labels_record_free(&lr);
		jv_free(rec);
	}
}

/* Random segmentations and spans against the definition, checked by brute force. */
static void test_assign_random(void)
{
	unsigned seed = (unsigned)time(NULL);
	srand(seed);
	for (int round = 0; round < 2000; round++) {
		uint32_t len = 1 + rand() % 60;
		uint32_t (*spans)[2] = malloc(8 * sizeof *spans);
		size_t ns = rand() % 4;
		/* disjoint sorted spans */
		uint32_t at = 0;
		size_t k = 0;
		for (size_t i = 0; i < ns && at < len; i++) {
			uint32_t a = at + rand() % (len - at + 1);
			uint32_t b = a + rand() % (len - a + 1);
			if (b > a) {
				spans[k][0] = a, spans[k][1] = b;
				k++;
			}
			at = b + 1;
		}
		struct labels_record lr = {.text = NULL, .len = len, .spans = spans, .nspans = k};
		/* tokens: a segmentation with some empty and some repeated ranges */
		struct tok_encoding e = {0};
		e.cap = 2 * len + 4;
		e.ids = malloc(e.cap * sizeof *e.ids);
		e.offsets = malloc(e.cap * sizeof *e.offsets);
		uint32_t p = 0;
		while (p < len) {
			uint32_t q = p + 1 + rand() % 5;
			if (q > len)
				q = len;
			if (rand() % 7 == 0) {
				e.offsets[e.n][0] = e.offsets[e.n][1] = p;
				e.ids[e.n] = (uint32_t)(e.n + 1000);
				e.n++;
			}
			int reps = rand() % 5 == 0 ? 2 : 1;
			for (int r = 0; r < reps; r++) {
				e.offsets[e.n][0] = p, e.offsets[e.n][1] = q;
				e.ids[e.n] = (uint32_t)(e.n + 1000);
				e.n++;
			}
			p = q;
		}
		int32_t *labels = malloc(e.n * sizeof *labels);
		struct labels_stats st = {0};
		struct err err = {0};
		int fate = labels_assign(&lr, &e, labels, 0, LABELS_OVERFLOW_DROP, nobos, &st, &err);
		size_t want_learned = 0;
		int bad = 0;
		for (size_t i = 0; i < e.n; i++) {
			uint32_t a = e.offsets[i][0], b = e.offsets[i][1];
			int in = 0;
			for (size_t s = 0; s < k; s++)
				in |= a == b ? (spans[s][0] <= a && a < spans[s][1]) : (spans[s][0] < b && a < spans[s][1]);
			want_learned += in;
			bad |= labels[i] != (in ? (int32_t)e.ids[i] : TOKSTREAM_IGNORE);
		}
		CHECK(!bad, "seed %u round %d: labels differ from the overlap rule", seed, round);
		CHECK(fate == (want_learned ? LABELS_KEEP : LABELS_EMPTY), "seed %u round %d: fate %d", seed, round, fate);
		free(labels);
		free(e.ids);
		free(e.offsets);
		free(spans);
		if (check_case_failed)
			break;
	}
}

static void test_overflow(void)
{
	uint32_t spans[1][2] = {{0, 10}};
	struct labels_record lr = {.len = 10, .spans = spans, .nspans = 1};
	uint32_t ids[10], offs[10][2];
	for (int i = 0; i < 10; i++)
		ids[i] = 5 + i, offs[i][0] = i, offs[i][1] = i + 1;
	int32_t labels[10];
	struct err err = {0};
	struct labels_stats st = {0};
	struct tok_encoding e = {.ids = ids, .offsets = offs, .n = 10, .cap = 10};
	CHECK(labels_assign(&lr, &e, labels, 4, LABELS_OVERFLOW_DROP, nobos, &st, &err) == LABELS_DROP, "drop");
	CHECK(st.dropped_long == 1 && st.records == 0, "drop counted");
	e.n = 10;
	CHECK(labels_assign(&lr, &e, labels, 4, LABELS_OVERFLOW_TRUNCATE, nobos, &st, &err) == LABELS_KEEP, "truncate");
	CHECK(e.n == 4 && st.truncated == 1 && st.tokens == 4 && st.learned == 4, "truncated to %zu", e.n);
	e.n = 10;
	CHECK(labels_assign(&lr, &e, labels, 4, LABELS_OVERFLOW_ERROR, nobos, &st, &err) == -1, "error");
	CHECK(strstr(err.msg, "10 tokens, longer than --max-len 4") != NULL, "message: %s", err.msg);
	e.n = 10;
	CHECK(labels_assign(&lr, &e, labels, 10, LABELS_OVERFLOW_ERROR, nobos, &st, &err) == LABELS_KEEP, "at the limit");
}

static void test_bos_and_stats(void)
{
	uint32_t ids[] = {1, 1, 7, 8};
	int32_t labels[] = {-100, -100, 7, 8};
	struct labels_stats st = {0};
	struct labels_bos turn_marker = {1, 0}, start_only = {1, 1};
	labels_stats_add(&st, ids, labels, 4, turn_marker);
	labels_stats_add(&st, ids + 1, labels + 1, 3, turn_marker);
	CHECK(st.multi_bos == 1, "adjacent BOS counted once: %llu", (unsigned long long)st.multi_bos);
	uint32_t turns[] = {1, 7, 8, 1, 7, 8};
	int32_t tl[] = {-100, -100, -100, -100, 7, 8};
	struct labels_stats s2 = {0};
	labels_stats_add(&s2, turns, tl, 6, turn_marker);
	CHECK(s2.multi_bos == 0, "a BOS that marks turns may repeat");
	labels_stats_add(&s2, turns, tl, 6, start_only);
	CHECK(s2.multi_bos == 1, "a start-only BOS may not");
	CHECK(st.records == 2 && st.tokens == 7 && st.learned == 4 && st.max_len == 4, "counts");
	CHECK(st.hist[3] == 1 && st.hist[2] == 1, "histogram: 4 in bucket 3, 3 in bucket 2");
	char buf[2048] = {0};
	FILE *f = fmemopen(buf, sizeof buf - 1, "w");
	labels_stats_print(&st, 1, f);
	fclose(f);
	CHECK(strstr(buf, "tokens: 7, learned 4 (57.1%)") != NULL, "summary: %s", buf);
}

int main(void)
{
	RUN(test_parse_good);
	RUN(test_parse_bad);
	RUN(test_assign_random);
	RUN(test_overflow);
	RUN(test_bos_and_stats);
	return check_done();
}

/* libFuzzer target for lib/tokstream: the input is a token stream file, read to
 * its end through the seekable path (a memory FILE that can seek), then again as
 * a pure stream. Any outcome but a crash, a leak or unbounded memory is fine; a
 * reader that says "ok" must have delivered records that obey the format. The
 * seed corpus (tests/fuzz/corpus/tokstream/) holds small valid files. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokstream.h"

static void read_all(const uint8_t *data, size_t size, int flags)
{
	/* fmemopen refuses a size of 0 on some libcs: give it one byte it never reads as data */
	FILE *f = size ? fmemopen((void *)data, size, "rb") : fmemopen("", 1, "r");
	if (!f)
		return;
	if (!size)
		fgetc(f);
	struct err err;
	struct tokstream_reader *r = tokstream_open_file(f, "fuzz", flags, &err);
	if (r) {
		const struct tokstream_info *in = tokstream_info(r);
		struct tokstream_record rec;
		uint64_t records = 0, tokens = 0;
		int rc;
		while ((rc = tokstream_next(r, &rec, &err)) == 1) {
			if (rec.n == 0 || rec.n > TOKSTREAM_MAX_TOKENS || rec.index != records)
				abort();
			for (uint32_t i = 0; i < rec.n; i++)
				if (rec.ids[i] >= in->vocab_size ||
				    (rec.labels[i] != TOKSTREAM_IGNORE && (uint32_t)rec.labels[i] != rec.ids[i]))
					abort();
			records++;
			tokens += rec.n;
		}
		if (rc == 0 && (in->n_records != records || in->n_tokens != tokens))
			abort(); /* read whole, the counts must be the ones delivered */
		if (in->seekable && rc == 0) {
			/* visit the chunks backwards */
			for (uint64_t k = in->n_chunks; k-- > 0;) {
				if (tokstream_seek_chunk(r, k, &err))
					break;
				while (tokstream_next(r, &rec, &err) == 1)
					;
			}
		}
		tokstream_close(r);
	}
	fclose(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	read_all(data, size, 0);
	read_all(data, size, TOKSTREAM_STREAM);
	return 0;
}

/* fit_stream_driver: writes a token stream from text, for qlora-fit's tests
 * (tests/cli/qlora-fit.sh) — streams no tokenizer would make: any vocabulary
 * size and tokenizer fingerprint, exact lengths and labels.
 *
 *   fit_stream_driver VOCAB FP_HEX OUT.tok.zst < records.txt
 *
 * One record per line: token ids separated by spaces, "~ID" for a token that
 * is not learned (label -100), "ID" for one that is. FP_HEX may be
 * "model:DIR": the fingerprint of DIR's tokenizer. Exit 2 with the message
 * of a refused record.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msg.h"
#include "tokenizer.h"
#include "tokstream.h"

int main(int argc, char **argv)
{
	msg_init(argv[0]);
	if (argc != 4)
		msg_die(EXIT_USAGE, "usage: fit_stream_driver VOCAB FP_HEX|model:DIR OUT.tok.zst < records.txt");
	struct err err = {0};
	uint32_t vocab = (uint32_t)strtoul(argv[1], NULL, 10);
	uint64_t fp;
	if (!strncmp(argv[2], "model:", 6)) {
		struct tokenizer *tk = tokenizer_load(argv[2] + 6, &err);
		msg_die_if(!tk, &err);
		fp = tokenizer_fingerprint(tk);
		tokenizer_free(tk);
	} else {
		fp = strtoull(argv[2], NULL, 16);
	}
	FILE *f = fopen(argv[3], "wb");
	if (!f)
		msg_die(EXIT_RUNTIME, "%s: cannot create", argv[3]);
	struct tokstream_writer *w = tokstream_writer_new(f, vocab, fp, &err);
	msg_die_if(!w, &err);
	/* small chunks, so that streams of a few records still have several */
	msg_die_if(tokstream_writer_tune(w, 0, 256, &err) < 0, &err);
	static char line[1 << 20];
	static uint32_t ids[1 << 16];
	static int32_t labels[1 << 16];
	while (fgets(line, sizeof line, stdin)) {
		uint32_t n = 0;
		for (char *tok = strtok(line, " \t\n"); tok && n < (1u << 16); tok = strtok(NULL, " \t\n")) {
			int learned = *tok != '~';
			ids[n] = (uint32_t)strtoul(tok + !learned, NULL, 10);
			labels[n] = learned ? (int32_t)ids[n] : TOKSTREAM_IGNORE;
			n++;
		}
		if (n == 0)
			continue;
		msg_die_if(tokstream_write(w, ids, labels, n, &err) < 0, &err);
	}
	msg_die_if(tokstream_writer_finish(w, &err) < 0, &err);
	if (fclose(f) != 0)
		msg_die(EXIT_RUNTIME, "%s: write error", argv[3]);
	return 0;
}

/* procstat: a line of /proc/self/status for the reference drivers' memory
 * figures (VmHWM, VmRSS; ru_maxrss would carry over the high-water mark of
 * a process image replaced by exec). */
#ifndef LORAPIPE_PROCSTAT_H
#define LORAPIPE_PROCSTAT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The value of the line starting with key ("VmHWM:"), in kB; -1 if absent. */
static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t n = strlen(key);
	while (f && fgets(line, sizeof line, f))
		if (!strncmp(line, key, n)) {
			v = strtol(line + n, NULL, 10);
			break;
		}
	if (f)
		fclose(f);
	return v;
}

#endif

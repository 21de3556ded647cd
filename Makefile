# lorapipe — build, test, install.
#   make            every tool into bin/
#   make test       every test that needs no GPU; ends with "N passed, N failed, N skipped"
#   make demo       a short run of the pipeline on the example data
#   make CUDA=0|1   force the CUDA build off or on (default: on when nvcc is found)
# Objects go to build/ (build/asan/ for the sanitizer build of the unit tests).

CC      ?= cc
PREFIX  ?= /usr/local
OPT     ?= -O2 -g
WARN     = -Wall -Wextra -Werror -Wno-unused-parameter -Wno-missing-field-initializers
CSTD     = -std=c11 -D_GNU_SOURCE
CPPFLAGS += -Ilib

# ---- what this machine has; printed so that a missing piece is never silent ----
have = $(shell pkg-config --exists $(1) 2>/dev/null && echo yes || echo no)
hdr  = $(shell printf '\#include <$(1)>\n' | $(CC) -E - >/dev/null 2>&1 && echo yes || echo no)

HAVE_JQ    := $(call hdr,jq.h)
HAVE_CURL  := $(call have,libcurl)
HAVE_ZSTD  := $(call have,libzstd)
HAVE_PCRE2 := $(call have,libpcre2-8)
HAVE_UTF8P := $(call have,libutf8proc)
BLAS_PC    := $(firstword $(foreach p,openblas blas,$(if $(filter yes,$(call have,$(p))),$(p))))
NVCC       ?= $(shell command -v nvcc 2>/dev/null)
ifeq ($(origin CUDA),undefined)
CUDA := $(if $(NVCC),1,0)
endif
CUDA_ARCH ?= 90

ifeq ($(MAKECMDGOALS),)
SHOW_CONFIG = 1
endif
ifneq ($(filter all test demo,$(MAKECMDGOALS)),)
SHOW_CONFIG = 1
endif
ifeq ($(SHOW_CONFIG),1)
$(info lorapipe build: cc=$(shell $(CC) -dumpfullversion 2>/dev/null || echo ?) ($(CC)))
$(info   libjq=$(HAVE_JQ) libcurl=$(HAVE_CURL) zstd=$(HAVE_ZSTD) pcre2=$(HAVE_PCRE2) utf8proc=$(HAVE_UTF8P) blas=$(or $(BLAS_PC),none))
$(info   cuda=$(CUDA)$(if $(NVCC), nvcc=$(NVCC) arch=sm_$(CUDA_ARCH), (nvcc not found)))
endif
MISSING := $(strip $(foreach d,JQ CURL ZSTD PCRE2 UTF8P,$(if $(filter no,$(HAVE_$(d))),$(d))))
ifneq ($(MISSING),)
ifneq ($(MAKECMDGOALS),clean)
$(error missing libraries: $(MISSING); on Debian: apt-get install libjq-dev libcurl4-openssl-dev libzstd-dev libpcre2-dev libutf8proc-dev libopenblas-dev pkg-config)
endif
endif

PKGS    = libcurl libzstd libpcre2-8 libutf8proc $(BLAS_PC)
CFLAGS  += $(CSTD) $(OPT) $(WARN) $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS  += -Wl,--as-needed -ljq $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lm -lpthread

LIB_SRC  := $(wildcard lib/*.c)
LIB_OBJ  := $(LIB_SRC:lib/%.c=build/lib/%.o)
TOOLS    := $(patsubst bin/%.c,bin/%,$(wildcard bin/*.c))
UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT     := $(UNIT_SRC:tests/unit/%.c=build/tests/%)
ASAN_FLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
ASAN_OBJ := $(LIB_SRC:lib/%.c=build/asan/lib/%.o)
ASAN_UNIT:= $(UNIT_SRC:tests/unit/%.c=build/asan/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ     := $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
BENCH_SRC:= $(wildcard tests/bench/bench_*.c)
BENCH    := $(BENCH_SRC:tests/bench/%.c=build/bench/%)
REF_SRC  := $(wildcard tests/ref/*.c)
REF      := $(REF_SRC:tests/ref/%.c=build/ref/%)

.PHONY: all test unit asan fuzz ref bench demo install clean
.SUFFIXES:
.DELETE_ON_ERROR:

all: $(TOOLS)

build/lib/%.o: lib/%.c $(wildcard lib/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -c -o $@ $<

build/liblorapipe.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

bin/%: bin/%.c build/liblorapipe.a
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< build/liblorapipe.a $(LDFLAGS) $(LDLIBS)

build/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h tests/unit/*.inc) build/liblorapipe.a
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Itests/unit $(CFLAGS) -o $@ $< build/liblorapipe.a $(LDFLAGS) $(LDLIBS)

# The sanitizer build: the same library and unit tests under ASan+UBSan.
build/asan/lib/%.o: lib/%.c $(wildcard lib/*.h)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(ASAN_FLAGS) -O1 -c -o $@ $<

build/asan/liblorapipe.a: $(ASAN_OBJ)
	@rm -f $@
	ar rcs $@ $^

build/asan/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h tests/unit/*.inc) build/asan/liblorapipe.a
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Itests/unit $(CFLAGS) $(ASAN_FLAGS) -O1 -o $@ $< build/asan/liblorapipe.a $(LDFLAGS) $(LDLIBS)

# libFuzzer targets (clang); each links the whole library built with the fuzzer's instrumentation.
FUZZ_CC ?= clang
build/fuzz/lib/%.o: lib/%.c $(wildcard lib/*.h)
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS) $(CSTD) -g -O1 -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -c -o $@ $<

build/fuzz/liblorapipe.a: $(LIB_SRC:lib/%.c=build/fuzz/lib/%.o)
	@rm -f $@
	ar rcs $@ $^

build/fuzz/%: tests/fuzz/%.c $(wildcard tests/unit/*.h) build/fuzz/liblorapipe.a
	@mkdir -p $(@D)
	$(FUZZ_CC) $(CPPFLAGS) $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -o $@ $< build/fuzz/liblorapipe.a $(LDFLAGS) $(LDLIBS)

# Helper programs of the reference tests (our side of a comparison).
build/ref/%: tests/ref/%.c build/liblorapipe.a
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< build/liblorapipe.a $(LDFLAGS) $(LDLIBS)

build/bench/%: tests/bench/%.c build/liblorapipe.a
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< build/liblorapipe.a $(LDFLAGS) $(LDLIBS)

unit: $(UNIT)
asan: $(ASAN_UNIT)
fuzz: $(FUZZ)
ref: $(REF)
bench: all $(BENCH) $(REF)
	tests/bench/run

# The whole suite: unit, sanitizer, command-line, reference and fuzz tests.
test: all $(UNIT) $(ASAN_UNIT) $(FUZZ) $(REF)
	tests/run

demo: all
	examples/demo.sh

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	$(if $(TOOLS),install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin)
	$(if $(wildcard man/*.1),install -m 644 $(wildcard man/*.1) $(DESTDIR)$(PREFIX)/share/man/man1)

clean:
	rm -rf build $(TOOLS)

-include $(LIB_OBJ:.o=.d)

# mailgate - one Makefile.
#
#   make            build bin/mailgate
#   make test       install missing deps, build, run unit + end-to-end tests, and a short fuzz run
#   make run        install missing deps, build, start local redis + capture SMTP, run the gateway
#   make asan       build with AddressSanitizer + UBSan into build/asan and run all tests with it
#   make unit       unit tests only;  make e2e  end-to-end tests only
#   make fuzz       build the libFuzzer targets with clang and run each FUZZ_TIME (20) seconds
#
# Every module folder's *.c is compiled; gateway/main.c holds main().
CC       ?= cc
BUILD    ?= build
BIN      ?= bin
PYTHON   := /usr/bin/python3
PKGS     := libmicrohttpd jansson hiredis libssl libcrypto libcurl libidn2 zlib
OPT      ?= -O2 -g
SAN      ?=
CFLAGS   := $(OPT) $(SAN) -std=c17 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter \
            -fno-strict-aliasing -pthread -I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS   := $(SAN) $(shell pkg-config --libs $(PKGS) 2>/dev/null) -pthread -lm

MODULES  := common templates queue smtp gateway
SRCS     := $(foreach m,$(MODULES),$(wildcard $(m)/*.c))
OBJS     := $(patsubst %.c,$(BUILD)/%.o,$(SRCS))
MAINOBJ  := $(BUILD)/gateway/main.o
# One static archive per module, linked in dependency order, so a unit test
# pulls in only the objects it needs.
ARCHIVES := $(foreach m,gateway smtp queue templates common,$(if $(filter-out gateway/main.c,$(wildcard $(m)/*.c)),$(BUILD)/lib$(m).a))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))

.PHONY: all deps test unit e2e run asan clean fuzz bench bench-suite soak
all: $(BIN)/mailgate

$(BIN)/mailgate: $(MAINOBJ) $(ARCHIVES)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $(MAINOBJ) $(ARCHIVES) $(LDLIBS)

define archive_rule
$(BUILD)/lib$(1).a: $(filter-out $(MAINOBJ),$(patsubst %.c,$(BUILD)/%.o,$(wildcard $(1)/*.c)))
	@mkdir -p $$(dir $$@)
	rm -f $$@; ar rcs $$@ $$^
endef
$(foreach m,$(MODULES),$(eval $(call archive_rule,$(m))))

# docs/openapi.yaml is built into the binary (GET /v1/openapi.yaml): od
# and awk (coreutils and mawk, in every Debian image) turn it into a C byte
# array that goes into libgateway.a beside gateway/gw_openapi.o.
OPENAPI_GEN := $(BUILD)/gen/openapi_yaml.c
$(OPENAPI_GEN): docs/openapi.yaml
	@mkdir -p $(dir $@)
	{ echo '/* generated from $< by the Makefile: do not edit */'; \
	  echo '#include <stddef.h>'; \
	  echo 'const unsigned char gw_openapi_yaml[] = {'; \
	  od -An -v -tx1 $< | awk '{ s = ""; for (i = 1; i <= NF; i++) s = s "0x" $$i ","; print s }'; \
	  echo '};'; \
	  echo "const size_t gw_openapi_yaml_len = $$(wc -c < $<);"; } > $@.tmp && mv $@.tmp $@
$(BUILD)/gen/openapi_yaml.o: $(OPENAPI_GEN)
	$(CC) $(CFLAGS) -c -o $@ $<
$(BUILD)/libgateway.a: $(BUILD)/gen/openapi_yaml.o

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(ARCHIVES)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(ARCHIVES) $(LDLIBS) -lcmocka

-include $(OBJS:.o=.d)

deps:
	@./scripts/deps.sh

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; MUSTACHE_SPEC_DIR=tests/data/mustache-spec $$t; done

e2e: $(BIN)/mailgate
	MAILGATE_BIN=$(abspath $(BIN)/mailgate) $(PYTHON) -m pytest -q -p no:cacheprovider tests/e2e

test: deps
	@$(MAKE) --no-print-directory all unit
	@$(MAKE) --no-print-directory e2e
	@$(MAKE) --no-print-directory fuzz FUZZ_TIME=10

asan: deps
	@$(MAKE) --no-print-directory BUILD=build/asan BIN=build/asan/bin OPT="-O1 -g" \
	    SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	    all unit e2e

run: deps all
	@./scripts/run.sh

# libFuzzer targets (tests/fuzz/fuzz_*.c), built with clang + ASan/UBSan
# from the module sources they exercise, each run for FUZZ_TIME seconds
# from the seeds in tests/fuzz/seeds/NAME (new inputs collect in
# build/fuzz/corpus-NAME). A crash stops make and leaves crash-* in build/fuzz.
FUZZ_CC    ?= clang
FUZZ_TIME  ?= 20
FUZZ_DIR   := $(BUILD)/fuzz
FUZZ_FLAGS := -g -O1 -std=c17 -D_GNU_SOURCE -I. $(shell pkg-config --cflags $(PKGS) 2>/dev/null) \
              -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_LIBS  := $(shell pkg-config --libs jansson libcrypto libidn2 zlib 2>/dev/null) -pthread -lm
FUZZ_MIME  := templates/mime_addr.c templates/mime_build.c templates/mime_encode.c templates/mime_dkim.c
FUZZ_SRC_addr := $(FUZZ_MIME)
FUZZ_SRC_mime := $(FUZZ_MIME)
FUZZ_SRC_tmpl := templates/tmpl.c
FUZZ_NAMES := addr mime $(if $(wildcard templates/tmpl.c),tmpl)

$(FUZZ_DIR)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_MIME) $(wildcard templates/tmpl.c) $(wildcard common/*.c)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< $(FUZZ_SRC_$*) $(wildcard common/*.c) $(FUZZ_LIBS)

fuzz: $(foreach n,$(FUZZ_NAMES),$(FUZZ_DIR)/fuzz_$(n))
	@set -e; for n in $(FUZZ_NAMES); do \
	    echo "== fuzz_$$n ($(FUZZ_TIME)s)"; mkdir -p $(FUZZ_DIR)/corpus-$$n; \
	    (cd $(FUZZ_DIR) && ./fuzz_$$n -max_total_time=$(FUZZ_TIME) -rss_limit_mb=2048 -timeout=10 \
	        -print_final_stats=1 corpus-$$n $(abspath tests/fuzz/seeds)/$$n >fuzz_$$n.log 2>&1) || \
	        { tail -n 60 $(FUZZ_DIR)/fuzz_$$n.log; echo "fuzz_$$n FAILED (log: $(FUZZ_DIR)/fuzz_$$n.log)"; exit 1; }; \
	    grep -E "^(Done|stat::number_of_executed_units)" $(FUZZ_DIR)/fuzz_$$n.log || true; \
	done

BENCH_POOL ?= 4
bench: deps all
	MAILGATE_BIN=$(abspath $(BIN)/mailgate) bench/drain.sh $(BENCH_POOL)

bench-suite: deps all
	MAILGATE_BIN=$(abspath $(BIN)/mailgate) bench/suite.sh

soak: deps all
	MAILGATE_BIN=$(abspath $(BIN)/mailgate) bench/soak.sh

clean:
	rm -rf $(BUILD) $(BIN)

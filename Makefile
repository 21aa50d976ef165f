# viperfs -- see README.md.  Plain make; WERROR=1 and SANITIZE=... as in git/redis.

CC ?= cc
PREFIX ?= /usr/local
PYTHON ?= /usr/bin/python3

CFLAGS_BASE = -std=gnu11 -O2 -g -Wall -Wextra -Wstrict-prototypes \
	-Wmissing-prototypes -Wvla -Wwrite-strings -Wformat=2 -fno-common \
	-D_FILE_OFFSET_BITS=64 -pthread
ifeq ($(WERROR),1)
CFLAGS_BASE += -Werror
endif
ifneq ($(SANITIZE),)
CFLAGS_BASE += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer
LDFLAGS += -fsanitize=$(SANITIZE)
endif
CFLAGS ?=
override CFLAGS := $(CFLAGS_BASE) $(CFLAGS)

# libfuse >= 3.16 (passthrough): the system's where it has one (Debian 13),
# else the static one deps builds from Debian 13's source into FUSE3_PREFIX
# (mount-scripts/build-libfuse.sh).  One prefix for every BUILD= dir.
# Recursive (=): evaluated when a recipe runs, after deps.
FUSE3_MIN = 3.16
FUSE3_PREFIX = $(CURDIR)/build/fuse3
FUSE_PKG_CONFIG = $(if $(shell pkg-config --atleast-version=$(FUSE3_MIN) fuse3 2>/dev/null && echo y),,PKG_CONFIG_PATH=$(FUSE3_PREFIX)/lib/pkgconfig$${PKG_CONFIG_PATH:+:$$PKG_CONFIG_PATH}) pkg-config
FUSE_CFLAGS = $(shell $(FUSE_PKG_CONFIG) --cflags fuse3 2>/dev/null)
FUSE_LIBS = $(shell $(FUSE_PKG_CONFIG) --static --libs fuse3 2>/dev/null || echo -lfuse3)

BUILD ?= build
ENGINE_SRC = $(wildcard engine/*.c engine/*/*.c)
ENGINE_OBJ = $(ENGINE_SRC:%.c=$(BUILD)/%.o)
FS_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(wildcard fs/*.c))
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
ENGINE_LIBS = -lfabric -lcrypto -lxxhash -lmicrohttpd -ljansson -lm -pthread

# The CUDA runtime, if the build finds it (the GPU tier; NO_CUDA=1 leaves it out).
CUDA_HOME ?= /usr/local/cuda
ifneq ($(NO_CUDA),1)
ifneq ($(wildcard $(CUDA_HOME)/include/cuda_runtime_api.h),)
override CFLAGS += -DVP_HAVE_CUDA
CUDA_INC = -I$(CUDA_HOME)/include
ENGINE_LIBS += -L$(CUDA_HOME)/lib64 -lcudart -Wl,-rpath,$(CUDA_HOME)/lib64
endif
endif

.PHONY: all deps test unit integration check bench bench-gpu clean install demo plan-report check-thread fuzz demo-local chaos
all: deps $(BUILD)/viperfs $(BUILD)/viperctl $(BUILD)/libviperfs_client.a $(BUILD)/tests/fabpoke $(BUILD)/tests/fabbw $(BUILD)/tests/hostile

# The C client library for local processes (GPU export): tools/viperfs_client.h
$(BUILD)/libviperfs_client.a: $(BUILD)/tools/viperfs_client.o
	ar rcs $@ $^

# Installs the Debian packages the build and tests need, if any is missing,
# and builds libfuse into FUSE3_PREFIX if the system's is too old for us.
deps:
	@[ "$(SKIP_DEPS)" = 1 ] || sh mount-scripts/install-deps.sh "$(FUSE3_PREFIX)"

$(BUILD)/%.o: %.c | deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(FUSE_CFLAGS) $(CUDA_INC) -MMD -MP -c $< -o $@

# Made anew each time (a deleted source leaves no stale member), and ar names
# members by file name only, so two engine sources may not share one.
$(BUILD)/libviper.a: $(ENGINE_OBJ)
	@dups=$$(for o in $^; do basename $$o; done | sort | uniq -d); \
	[ -z "$$dups" ] || { echo "libviper.a: engine sources share a name: $$dups" >&2; exit 1; }
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/viperfs: $(FS_OBJ) $(BUILD)/libviper.a
	$(CC) $(LDFLAGS) -o $@ $(FS_OBJ) $(BUILD)/libviper.a $(FUSE_LIBS) $(ENGINE_LIBS)

VIPERCTL_OBJ = $(patsubst %.c,$(BUILD)/%.o,$(wildcard tools/*.c))
$(BUILD)/viperctl: $(VIPERCTL_OBJ) $(BUILD)/libviper.a
	$(CC) $(LDFLAGS) -o $@ $(VIPERCTL_OBJ) $(BUILD)/libviper.a $(ENGINE_LIBS)

$(BUILD)/tests/fab%: tests/tools/fab%.c $(BUILD)/libviper.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libviper.a $(ENGINE_LIBS)

# The hostile peer of the security tests (tests/integration/test_security.py).
$(BUILD)/tests/hostile: tests/tools/hostile.c $(BUILD)/libviper.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libviper.a $(ENGINE_LIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libviper.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libviper.a -lcmocka $(ENGINE_LIBS)

unit: all $(UNIT_BIN)
	@sh tests/run-unit.sh $(UNIT_BIN)

integration: all
	@$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

# Unit tests, then integration tests on real mounts; one summary line at the end.
test: all $(UNIT_BIN)
	@VIPERFS_BUILD=$(abspath $(BUILD)) sh tests/run-all.sh "$(PYTHON)" $(UNIT_BIN)

check:
	$(MAKE) BUILD=build-san SANITIZE=address,undefined test

# The chaos test, long and with a random seed (make test runs 40 s of seed 1234):
# CHAOS_SECONDS=600 CHAOS_SEED=42 make chaos
CHAOS_SECONDS ?= 300
CHAOS_SEED ?= random
chaos: all
	@CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=$(CHAOS_SEED) VIPERFS_BUILD=$(abspath $(BUILD)) \
		$(PYTHON) -m pytest -q -s -p no:cacheprovider tests/integration/test_chaos.py

check-thread:
	$(MAKE) BUILD=build-tsan SANITIZE=thread test

# The GPU tier: host<->device bandwidth against raw pinned cudaMemcpy (needs a GPU).
NVCC ?= $(CUDA_HOME)/bin/nvcc
GPU_BENCH_MIB ?= 1024
ifneq ($(CUDA_INC),)
$(BUILD)/tests/tierbw: tests/gpu/tierbw.c $(BUILD)/libviper.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(CUDA_INC) -o $@ $< $(BUILD)/libviper.a $(ENGINE_LIBS)

$(BUILD)/tests/ipc_reader: tests/gpu/ipc_reader.cu tools/viperfs_client.c tools/viperfs_client.h
	@mkdir -p $(dir $@)
	$(NVCC) -O2 -o $@ tests/gpu/ipc_reader.cu tools/viperfs_client.c -ljansson

bench-gpu: all $(BUILD)/tests/tierbw
	$(BUILD)/tests/tierbw $(GPU_BENCH_MIB) 5
else
bench-gpu:
	@echo "make bench-gpu: this build has no CUDA runtime (CUDA_HOME=$(CUDA_HOME)); nothing to measure"; exit 1
endif

bench: all
	@$(PYTHON) tests/bench/bench.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/bench_repl.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/bench_fanout.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/bench_seal.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/charts.py

# The planner's real run: NT3-like CNN, actual CIL of each schedule (~3 min).
plan-report: all
	@$(PYTHON) tests/planner/nt3_run.py

# libFuzzer on the replication wire decoder and the session layer (clang); FUZZ_TIME seconds each.
FUZZ_TIME ?= 60
fuzz: deps
	@mkdir -p $(BUILD)/fuzz tests/fuzz/corpus tests/fuzz/corpus-sess
	clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -o $(BUILD)/fuzz/fuzz_proto \
		tests/fuzz/fuzz_proto.c engine/proto.c
	$(BUILD)/fuzz/fuzz_proto -max_total_time=$(FUZZ_TIME) -max_len=65536 \
		-print_final_stats=1 tests/fuzz/corpus
	clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -o $(BUILD)/fuzz/fuzz_sess \
		tests/fuzz/fuzz_sess.c engine/sess.c engine/proto.c -lcrypto
	$(BUILD)/fuzz/fuzz_sess -max_total_time=$(FUZZ_TIME) -max_len=65536 \
		-print_final_stats=1 tests/fuzz/corpus-sess tests/fuzz/corpus

# Two nodes (network namespaces): a training producer and inference consumers,
# viperfs against the PFS with a 1 s poll (DEMO_SIZE, default 1G; EPOCHS, default 7).
demo: all
	@sh mount-scripts/demo.sh

# One node: a mount, a training loop, the flush.
demo-local: all
	@sh mount-scripts/demo-local.sh

# SBINDIR: where mount(8) looks for helpers (/sbin/mount.TYPE).
SBINDIR ?= /sbin
SYSTEMDDIR ?= /etc/systemd/system
DOCDIR ?= $(PREFIX)/share/doc/viperfs
SUBST = sed -e 's|@BINDIR@|$(PREFIX)/bin|g' -e 's|@DOCDIR@|$(DOCDIR)|g'
install: all
	install -D -m 0755 $(BUILD)/viperfs $(DESTDIR)$(PREFIX)/bin/viperfs
	install -D -m 0755 $(BUILD)/viperctl $(DESTDIR)$(PREFIX)/bin/viperctl
	install -D -m 0644 $(BUILD)/libviperfs_client.a $(DESTDIR)$(PREFIX)/lib/libviperfs_client.a
	install -D -m 0644 tools/viperfs_client.h $(DESTDIR)$(PREFIX)/include/viperfs_client.h
	@mkdir -p $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(DOCDIR)
	$(SUBST) mount-scripts/mount.viperfs > $(DESTDIR)$(SBINDIR)/mount.viperfs
	$(SUBST) mount-scripts/umount.viperfs > $(DESTDIR)$(SBINDIR)/umount.viperfs
	chmod 0755 $(DESTDIR)$(SBINDIR)/mount.viperfs $(DESTDIR)$(SBINDIR)/umount.viperfs
	ln -sf mount.viperfs $(DESTDIR)$(SBINDIR)/mount.fuse.viperfs
	ln -sf umount.viperfs $(DESTDIR)$(SBINDIR)/umount.fuse.viperfs
	$(SUBST) mount-scripts/viperfs-slurm > $(DESTDIR)$(PREFIX)/bin/viperfs-slurm
	chmod 0755 $(DESTDIR)$(PREFIX)/bin/viperfs-slurm
	$(SUBST) mount-scripts/viperfs@.service > $(DESTDIR)$(SYSTEMDDIR)/viperfs@.service
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md

clean:
	rm -rf build build-san build-tsan

-include $(ENGINE_OBJ:.o=.d) $(FS_OBJ:.o=.d) $(VIPERCTL_OBJ:.o=.d)

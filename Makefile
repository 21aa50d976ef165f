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
FUSE_SYSTEM = $(shell pkg-config --atleast-version=$(FUSE3_MIN) fuse3 2>/dev/null && echo y)
FUSE_PKG_CONFIG = $(if $(FUSE_SYSTEM),,PKG_CONFIG_PATH=$(FUSE3_PREFIX)/lib/pkgconfig$${PKG_CONFIG_PATH:+:$$PKG_CONFIG_PATH}) pkg-config
FUSE_CFLAGS = $(shell $(FUSE_PKG_CONFIG) --cflags fuse3 2>/dev/null)
FUSE_LIBS = $(shell $(FUSE_PKG_CONFIG) --static --libs fuse3 2>/dev/null || echo -lfuse3)
# The private libfuse runs the fusermount3 of its prefix, a path in the build
# tree; the daemon runs the one make install puts in LIBEXECDIR instead
# (fs/fusermount.c).  LIBFUSE_FUSERMOUNT: the path compiled into the library.
LIBFUSE_FUSERMOUNT = $(shell $(FUSE_PKG_CONFIG) --variable=prefix fuse3 2>/dev/null)/bin/fusermount3
FUSERMOUNT_DEFS = $(if $(FUSE_SYSTEM),,-DVP_FUSERMOUNT='"$(LIBEXECDIR)/fusermount3"' -DVP_LIBFUSE_FUSERMOUNT='"$(LIBFUSE_FUSERMOUNT)"')
FUSERMOUNT_WRAP = $(if $(FUSE_SYSTEM),,-Wl,--wrap=posix_spawn)

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

# Where make install puts things (DESTDIR= stages them elsewhere).  SBINDIR:
# the mount helpers.  mount(8) runs /sbin/mount.fuse.viperfs, and on Debian
# /sbin is /usr/sbin: PREFIX=/usr (or SBINDIR=/sbin) makes `mount -t
# fuse.viperfs` find them.  LIBEXECDIR: programs only viperfs runs.
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
LIBEXECDIR ?= $(PREFIX)/lib/viperfs
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/viperfs
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
SYSTEMDDIR ?= /etc/systemd/system

.PHONY: all deps test-deps test unit integration check bench paper bench-gpu clean install uninstall deb demo plan-report check-thread fuzz demo-local chaos posix-suite FORCE
all: deps $(BUILD)/viperfs $(BUILD)/viperctl $(BUILD)/libviperfs_client.a $(BUILD)/tests/fabpoke $(BUILD)/tests/fabbw $(BUILD)/tests/hostile $(BUILD)/man/viperfs.8

# The C client library for local processes (GPU export): tools/viperfs_client.h
$(BUILD)/libviperfs_client.a: $(BUILD)/tools/viperfs_client.o
	ar rcs $@ $^

# Installs the Debian packages the build and the daemon need, if any is
# missing, and builds libfuse into FUSE3_PREFIX if the system's is too old for
# us; test-deps adds what the tests, benchmarks and demos need (cmocka for the
# unit tests first).  SKIP_DEPS=1 installs nothing.
deps:
	@[ "$(SKIP_DEPS)" = 1 ] || sh mount-scripts/install-deps.sh "$(FUSE3_PREFIX)"

test-deps: deps
	@[ "$(SKIP_DEPS)" = 1 ] || sh mount-scripts/install-deps.sh --test "$(FUSE3_PREFIX)"

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
	$(CC) $(LDFLAGS) $(FUSERMOUNT_WRAP) -o $@ $(FS_OBJ) $(BUILD)/libviper.a $(FUSE_LIBS) -lmount $(ENGINE_LIBS)

# fs/fusermount.o names LIBEXECDIR: made again when that changes (git's GIT-PREFIX).
$(BUILD)/fs/fusermount.o: override CFLAGS += $(FUSERMOUNT_DEFS)
$(BUILD)/fs/fusermount.o: $(BUILD)/FUSERMOUNT-DEFS
$(BUILD)/FUSERMOUNT-DEFS: FORCE | deps
	@mkdir -p $(dir $@)
	@echo '$(LIBEXECDIR) $(LIBFUSE_FUSERMOUNT) $(FUSE_SYSTEM)' | cmp -s - $@ || \
		echo '$(LIBEXECDIR) $(LIBFUSE_FUSERMOUNT) $(FUSE_SYSTEM)' > $@
FORCE:

# viperfs(8): docs/man/viperfs.8.in with its options section made from the
# option table (`viperfs --help`), so the page lists what the daemon takes.
$(BUILD)/man/viperfs.8: docs/man/viperfs.8.in docs/man/options.awk $(BUILD)/viperfs
	@mkdir -p $(dir $@)
	ASAN_OPTIONS=detect_leaks=0 $(BUILD)/viperfs --help | awk -f docs/man/options.awk - docs/man/viperfs.8.in > $@.tmp
	@mv $@.tmp $@

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

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libviper.a | test-deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libviper.a -lcmocka $(ENGINE_LIBS)

unit: all test-deps $(UNIT_BIN)
	@sh tests/run-unit.sh $(UNIT_BIN)

integration: all test-deps
	@$(PYTHON) -m pytest -q -p no:cacheprovider tests/integration

# Unit tests, then integration tests on real mounts; one summary line at the end.
test: all test-deps $(UNIT_BIN)
	@VIPERFS_BUILD=$(abspath $(BUILD)) sh tests/run-all.sh "$(PYTHON)" $(UNIT_BIN)

check:
	$(MAKE) BUILD=build-san SANITIZE=address,undefined test

# The chaos test, long and with a random seed (make test runs 40 s of seed 1234):
# CHAOS_SECONDS=600 CHAOS_SEED=42 make chaos
CHAOS_SECONDS ?= 300
CHAOS_SEED ?= random
chaos: all test-deps
	@CHAOS_SECONDS=$(CHAOS_SECONDS) CHAOS_SEED=$(CHAOS_SEED) VIPERFS_BUILD=$(abspath $(BUILD)) \
		$(PYTHON) -m pytest -q -s -p no:cacheprovider tests/integration/test_chaos.py

# A POSIX conformance suite you built (pjdfstest; not packaged by Debian):
# PJDFSTEST=DIR make posix-suite  (tmpfs and a viperfs mount, side by side)
posix-suite: all test-deps
	@VIPERFS_BUILD=$(abspath $(BUILD)) $(PYTHON) tests/posix/suite.py $(PJDFSTEST)

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

bench-gpu: all test-deps $(BUILD)/tests/tierbw
	$(BUILD)/tests/tierbw $(GPU_BENCH_MIB) 5
else
bench-gpu:
	@echo "make bench-gpu: this build has no CUDA runtime (CUDA_HOME=$(CUDA_HOME)); nothing to measure"; exit 1
endif

bench: all test-deps
	@$(PYTHON) tests/bench/bench.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/bench_repl.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/bench_pfs.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/bench_fanout.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/bench_seal.py $(BENCH_ARGS)
	@$(PYTHON) tests/bench/charts.py

# The paper's experiments (tests/paper/), about 15 minutes: 1. update latency
# for 600 MB and 4.6 GB checkpoints against GlusterFS with pollers
# (BENCH_PFS=DIR: your PFS); 2. cumulative inference loss and training
# overhead of an NT3-like run.  PAPER_ARGS=--quick: a short run of both.
paper: all test-deps
	@$(PYTHON) tests/paper/update_latency.py $(PAPER_ARGS)
	@$(PYTHON) tests/paper/cil.py $(PAPER_ARGS)

# The planner's real run: NT3-like CNN, actual CIL of each schedule (~3 min).
plan-report: all test-deps
	@$(PYTHON) tests/planner/nt3_run.py

# libFuzzer on the replication wire decoder and the session layer (clang); FUZZ_TIME seconds each.
FUZZ_TIME ?= 60
fuzz: test-deps
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
demo: all test-deps
	@sh mount-scripts/demo.sh

# One node: a mount, a training loop, the flush.
demo-local: all test-deps
	@sh mount-scripts/demo-local.sh

# make install; make uninstall removes what it put there (the same variables).
# Man pages: the generated viperfs(8) and every docs/man/*.[18], gzipped as
# Debian has them.  The fusermount3 of the private libfuse goes to LIBEXECDIR,
# not setuid: root mounts need it only for auto_unmount (fs/fusermount.c).
SUBST = sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g'
MAN_PAGES = $(BUILD)/man/viperfs.8 $(filter-out docs/man/viperfs.8,$(wildcard docs/man/*.[18]))
man_dest = $(MANDIR)/man$(patsubst .%,%,$(suffix $(1)))/$(notdir $(1)).gz
BASH_COMPLETION = $(wildcard mount-scripts/viperctl.bash-completion)
INSTALLED = $(BINDIR)/viperfs $(BINDIR)/viperctl $(BINDIR)/viperfs-slurm \
	$(LIBDIR)/libviperfs_client.a $(INCLUDEDIR)/viperfs_client.h \
	$(SBINDIR)/mount.viperfs $(SBINDIR)/umount.viperfs \
	$(SBINDIR)/mount.fuse.viperfs $(SBINDIR)/umount.fuse.viperfs \
	$(SYSTEMDDIR)/viperfs@.service $(DOCDIR)/README.md \
	$(foreach m,$(MAN_PAGES),$(call man_dest,$(m))) $(MANDIR)/man8/umount.viperfs.8.gz \
	$(if $(BASH_COMPLETION),$(BASHCOMPDIR)/viperctl) \
	$(if $(FUSE_SYSTEM),,$(LIBEXECDIR)/fusermount3)
install: all
	install -D -m 0755 $(BUILD)/viperfs $(DESTDIR)$(BINDIR)/viperfs
	install -D -m 0755 $(BUILD)/viperctl $(DESTDIR)$(BINDIR)/viperctl
	install -D -m 0644 $(BUILD)/libviperfs_client.a $(DESTDIR)$(LIBDIR)/libviperfs_client.a
	install -D -m 0644 tools/viperfs_client.h $(DESTDIR)$(INCLUDEDIR)/viperfs_client.h
	@mkdir -p $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(DOCDIR) $(DESTDIR)$(MANDIR)/man8
	$(SUBST) mount-scripts/mount.viperfs > $(DESTDIR)$(SBINDIR)/mount.viperfs
	$(SUBST) mount-scripts/umount.viperfs > $(DESTDIR)$(SBINDIR)/umount.viperfs
	chmod 0755 $(DESTDIR)$(SBINDIR)/mount.viperfs $(DESTDIR)$(SBINDIR)/umount.viperfs
	ln -sf mount.viperfs $(DESTDIR)$(SBINDIR)/mount.fuse.viperfs
	ln -sf umount.viperfs $(DESTDIR)$(SBINDIR)/umount.fuse.viperfs
	$(SUBST) mount-scripts/viperfs-slurm > $(DESTDIR)$(BINDIR)/viperfs-slurm
	chmod 0755 $(DESTDIR)$(BINDIR)/viperfs-slurm
	$(SUBST) mount-scripts/viperfs@.service > $(DESTDIR)$(SYSTEMDDIR)/viperfs@.service
	chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/viperfs@.service
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	$(foreach m,$(MAN_PAGES),mkdir -p $(dir $(DESTDIR)$(call man_dest,$(m))) && \
		gzip -9n < $(m) > $(DESTDIR)$(call man_dest,$(m)) && \
		chmod 0644 $(DESTDIR)$(call man_dest,$(m)) &&) true
	ln -sf mount.viperfs.8.gz $(DESTDIR)$(MANDIR)/man8/umount.viperfs.8.gz
	$(if $(BASH_COMPLETION),install -D -m 0644 $(BASH_COMPLETION) $(DESTDIR)$(BASHCOMPDIR)/viperctl)
	$(if $(FUSE_SYSTEM),,install -D -m 0755 $(FUSE3_PREFIX)/bin/fusermount3 $(DESTDIR)$(LIBEXECDIR)/fusermount3)
	@case "$(SBINDIR)" in /sbin|/usr/sbin) ;; *) echo "make install: mount(8) looks for its helpers in /sbin, not $(SBINDIR): PREFIX=/usr or SBINDIR=/sbin makes 'mount -t fuse.viperfs' work" ;; esac

# No `all`: what to remove is known without building anything.  Only the
# directories that are viperfs's own go with the files.
uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	rmdir $(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(DOCDIR) 2>/dev/null || true

# A Debian package of this tree (PREFIX=/usr, the unit in /lib/systemd/system),
# built in DEB_BUILD so that build/ stays as it is, staged with make install and
# packed by mount-scripts/make-deb.sh (Depends from dpkg-shlibdeps).  Without
# the CUDA runtime unless DEB_NO_CUDA=0: Debian has no package of it to depend on.
DEB_BUILD ?= build-deb
DEB_NO_CUDA ?= 1
deb:
	rm -rf $(DEB_BUILD)/debian
	$(MAKE) BUILD=$(DEB_BUILD) NO_CUDA=$(DEB_NO_CUDA) PREFIX=/usr SYSTEMDDIR=/lib/systemd/system \
		DESTDIR=$(abspath $(DEB_BUILD))/debian/viperfs install
	sh mount-scripts/make-deb.sh $(DEB_BUILD)

clean:
	rm -rf build build-san build-tsan $(DEB_BUILD)

-include $(ENGINE_OBJ:.o=.d) $(FS_OBJ:.o=.d) $(VIPERCTL_OBJ:.o=.d)

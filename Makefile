# distgn: setup, demo and tests on Debian 12 (root or sudo) or any machine with the packages below.
VENV      ?= .venv
PY        := $(VENV)/bin/python
NP_MPI    ?= 2
APT_PKGS  := openmpi-bin python3-mpi4py python3-petsc4py-real python3-h5py-mpi python3-scipy \
             python3-matplotlib python3-venv slurm-wlm munge
MPIEXEC   := OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 \
             OPENBLAS_NUM_THREADS=1 mpiexec --oversubscribe
PYTEST    := -m pytest -q -p no:cacheprovider
STAMP     := $(VENV)/.installed

.PHONY: setup demo test test-serial test-mpi lint format tree-snapshot check-clean clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@if ! dpkg -s $(APT_PKGS) >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(APT_PKGS)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PKGS); \
	fi
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	echo "/usr/lib/petscdir/petsc3.18/x86_64-linux-gnu-real/lib/python3/dist-packages" \
	  > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/distgn-petsc4py.pth
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: setup
	$(MPIEXEC) -n $(NP_MPI) $(PY) -m mpi4py -m distgn train examples/demo.toml

# CI (.ci/run) runs `make test`: lint, the serial suite (which runs every example end to end), the
# MPI suite on 2, 3 and 4 ranks, and a check that the tests left no file in the source tree.
test: setup tree-snapshot lint test-serial test-mpi check-clean

test-serial: setup
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) $(PYTEST) --with-mpi tests

test-mpi: setup
	for np in 2 3 4; do \
	  $(MPIEXEC) -n $$np $(PY) -m mpi4py $(PYTEST) --with-mpi -m mpi tests || exit 1; \
	done

# Files that are neither tracked nor the environment's, before and after the tests: the tests must
# not add any (they write into temporary folders only).
TREE_FILES := git status --porcelain --untracked-files=all --ignored | grep -E '^(\?\?|!!) ' \
              | grep -v -E '^!! (\.venv/|\.ruff_cache/|(.*/)?__pycache__/|.*\.egg-info/)' | sort

tree-snapshot: setup
	@$(TREE_FILES) > $(VENV)/tree-before.txt

check-clean:
	@$(TREE_FILES) > $(VENV)/tree-after.txt; \
	left=$$(comm -13 $(VENV)/tree-before.txt $(VENV)/tree-after.txt); \
	if [ -n "$$left" ]; then echo "files left in the source tree by the tests:"; \
	  echo "$$left"; exit 1; fi; echo "source tree clean after the tests"

lint: setup
	$(VENV)/bin/ruff check distgn tests scripts
	$(VENV)/bin/ruff format --check distgn tests scripts

format: setup
	$(VENV)/bin/ruff format distgn tests scripts

clean:
	rm -rf $(VENV) *.egg-info

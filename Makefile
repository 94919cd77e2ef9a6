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

.PHONY: setup demo test test-serial test-mpi lint clean

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

test: setup test-serial test-mpi

test-serial: setup
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(PY) $(PYTEST) --with-mpi tests

test-mpi: setup
	$(MPIEXEC) -n 2 $(PY) -m mpi4py $(PYTEST) --with-mpi -m mpi tests
	$(MPIEXEC) -n 4 $(PY) -m mpi4py $(PYTEST) --with-mpi -m mpi tests

lint: setup
	$(VENV)/bin/ruff check distgn tests scripts

clean:
	rm -rf $(VENV) *.egg-info

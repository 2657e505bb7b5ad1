# The two front-door commands (README): `make demo` and `make test`; `make test-fast` and `make lint` for the
# edit loop (neither installs anything).
PY ?= python3
# DALI build matching the GPU driver: dali-cuda130 (driver R580+) or dali-cuda120 (CUDA 12 drivers).
DALI ?= dali-cuda130
# Where `make gpu-wheels` puts the wheels benchmarks/gpu_check.sh installs on an air-gapped GPU node.
WHEELS ?= .whl

# `make image`: container/Containerfile with podman, else docker (docs/containers.md). BASE= another base image
# (a plain Python one gets PyTorch, torchvision and DALI from the index), IMAGE= the tag, BUILD_ARGS= more
# build options (e.g. --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt behind a TLS-intercepting proxy).
BASE ?= nvcr.io/nvidia/pytorch:25.01-py3
IMAGE ?= burn-suite:latest
BUILD_ARGS ?=
ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)

.PHONY: install demo test test-fast test-container lint cluster-up cluster-down gpu-wheels image

install:
	$(PY) -m pip install -q --root-user-action=ignore -e '.[test,$(DALI)]'

demo: install
	$(PY) launch/submit.py preset=tiny stage=all cluster=local

cluster-up:
	bash slurm/local-cluster/start.sh

cluster-down:
	bash slurm/local-cluster/stop.sh

test: install cluster-up
	$(PY) -m pytest -m "not container"

# Builds the image from container/Containerfile with Podman (installed with apt when missing, as root) and
# runs 2-node stage=all jobs inside it on the local cluster: tests/container/, docs/containers.md.
test-container: install cluster-up
	BURN_CONTAINER_TESTS=1 $(PY) -m pytest -m container -v -p no:cacheprovider --basetemp=$${TMPDIR:-/tmp}/burn-test-container

image:
	$(ENGINE) build -f container/Containerfile --build-arg BASE=$(BASE) -t $(IMAGE) $(BUILD_ARGS) .

# The edit loop: in-process tests only (no cluster, no GPU, nothing that starts a process or trains a
# stage): about 40 s of CPU. tests/conftest.py fails a test that starts a process unmarked.
# One OpenMP thread unless set: on a busy machine torch's spinning threads made it 3x slower (3.5 min).
test-fast:
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m "not slow and not slurm and not gpu and not process"

# ruff's rules and format are in pyproject.toml; .ci/run runs this before the tests.
lint:
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# Hydra, OmegaConf, its ANTLR runtime and Submitit for a GPU node with PyTorch but no network (Python
# 3.12, x86-64): `make gpu-wheels`, copy $(WHEELS)/ along, `benchmarks/gpu_check.sh $(WHEELS)`.
# antlr4-python3-runtime 4.9.3 exists only as a source archive: built here into a pure-Python wheel.
gpu-wheels:
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(WHEELS) 'hydra-core>=1.3,<1.4' 'omegaconf>=2.2,<2.4' 'submitit>=1.5'
	$(PY) -m pip wheel -q --no-deps -w $(WHEELS) 'antlr4-python3-runtime==4.9.3'

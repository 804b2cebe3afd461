# Build, run and test the model repack image. `make help` lists the targets.

PYTHON ?= python3
VENV ?= .venv
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REVISION := $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
SOURCE := $(shell git config --get remote.origin.url 2>/dev/null || echo unknown)
IMAGE ?= sagemaker-model-repack:$(VERSION)

# The Dockerfile's default base is used when Docker has it locally. Otherwise
# the local Debian 13 base from .ci/build-base-image.sh is used, and built if
# missing. Pass BASE_IMAGE=... to choose another one; docker build then pulls
# it if needed.
DEFAULT_BASE_IMAGE := $(shell sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)
LOCAL_BASE_IMAGE ?= repack-base:trixie-tini
ifndef BASE_IMAGE
BASE_IMAGE := $(shell docker image inspect $(DEFAULT_BASE_IMAGE) >/dev/null 2>&1 \
	&& echo $(DEFAULT_BASE_IMAGE) || echo $(LOCAL_BASE_IMAGE))
endif

# `make push` pushes IMAGE as $(REGISTRY)/$(REPOSITORY):$(TAG). REGISTRY is a
# registry host, optionally followed by a path. TAG defaults to the git commit;
# when HEAD carries a release tag vX.Y.Z, the image is pushed as X.Y.Z too.
# For an Amazon ECR host, push logs in with the AWS CLI first; LOGIN= (empty)
# skips that, for example when docker is logged in already.
REGISTRY ?=
REPOSITORY ?= sagemaker-model-repack
TAG ?= $(REVISION)
LOGIN ?= ecr
REGISTRY_HOST = $(firstword $(subst /, ,$(REGISTRY)))
# An ECR host is <account>.dkr.ecr.<region>.amazonaws.com.
ECR_REGION = $(word 4,$(subst ., ,$(REGISTRY_HOST)))
RELEASE_VERSION = $(patsubst v%,%,$(shell git tag --points-at HEAD 2>/dev/null \
	| grep -E '^v[0-9]+\.[0-9]+\.[0-9]+$$' | head -n 1))
PUSH_IMAGE = $(REGISTRY)/$(REPOSITORY)

# `make run` writes the repacked example here.
RUN_OUTPUT ?= $(CURDIR)/out
EXAMPLE := $(CURDIR)/tests/example

.DEFAULT_GOAL := help
.PHONY: help venv base-image build run test bench example clean push

help: ## List the targets
	@echo "Usage: make <target> [IMAGE=...] [BASE_IMAGE=...] [PYTHON=...]"
	@echo
	@awk -F ':.*## ' '/^[a-z-]+:.*## / { printf "  %-11s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE)"

venv: $(VENV)/.installed ## Create .venv with the test dependencies pinned in pyproject.toml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))' > $(VENV)/requirements.txt
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt
	touch $@

base-image: ## Make sure the base image exists, building the local Debian 13 one if needed
	@if docker image inspect $(BASE_IMAGE) >/dev/null 2>&1; then \
		echo "Base image: $(BASE_IMAGE)"; \
	elif [ "$(BASE_IMAGE)" = "$(LOCAL_BASE_IMAGE)" ]; then \
		.ci/build-base-image.sh $(LOCAL_BASE_IMAGE); \
	else \
		echo "Base image $(BASE_IMAGE) is not local; docker build will pull it"; \
	fi

build: base-image ## Build the image (IMAGE)
	docker build --platform linux/amd64 \
		--build-arg BASE_IMAGE=$(BASE_IMAGE) \
		--build-arg VERSION=$(VERSION) \
		--build-arg REVISION=$(REVISION) \
		--build-arg SOURCE=$(SOURCE) \
		--tag $(IMAGE) .
	@echo "Image $(IMAGE): $$(docker image inspect --format '{{.Size}}' $(IMAGE)) bytes;" \
		"base $(BASE_IMAGE): $$(docker image inspect --format '{{.Size}}' $(BASE_IMAGE)) bytes"

run: build ## Repack the example in tests/example and list the output's members
	rm -rf $(RUN_OUTPUT)
	mkdir -p $(RUN_OUTPUT)
	docker run --rm \
		-v $(EXAMPLE)/models:/opt/ml/code/models:ro \
		-v $(EXAMPLE)/hyperparams:/opt/ml/code/hyperparams:ro \
		-v $(RUN_OUTPUT):/opt/ml/processing/output \
		$(IMAGE)
	@echo
	@echo "Output: $(RUN_OUTPUT)/model/model.tar.gz"
	@tar -tvzf $(RUN_OUTPUT)/model/model.tar.gz

# Without a Docker engine, and outside CI, the container tests skip themselves,
# so the build is skipped too and the unit tests still run.
test: venv ## Run the unit and integration tests against a fresh build of the image
	@if [ "$$CI" = true ] || docker info >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory build; \
	else \
		echo "No Docker engine answers: skipping the build; the container tests will skip"; \
	fi
	REPACK_IMAGE=$(IMAGE) BASE_IMAGE=$(BASE_IMAGE) $(VENV)/bin/pytest

# The classic builder that `make build` uses makes one linux/amd64 image, which
# docker push sends with a Docker v2 schema 2 manifest and no provenance
# attestation. SageMaker has rejected OCI manifests and image indexes, so a
# buildx build for this image needs --provenance=false and --output type=docker.
push: build ## Push IMAGE to REGISTRY as TAG (default: the git commit), and as X.Y.Z on tag vX.Y.Z
	@if [ -z "$(REGISTRY)" ]; then \
		echo "make push: set REGISTRY, for example REGISTRY=123456789012.dkr.ecr.eu-west-1.amazonaws.com" >&2; \
		exit 1; \
	fi
	@if [ "$(TAG)" = unknown ]; then \
		echo "make push: no git commit to tag the image with; set TAG" >&2; \
		exit 1; \
	fi
	@if [ -n "$(RELEASE_VERSION)" ] && [ "$(RELEASE_VERSION)" != "$(VERSION)" ]; then \
		echo "make push: HEAD is tagged v$(RELEASE_VERSION) but pyproject.toml has version $(VERSION)" >&2; \
		exit 1; \
	fi
	@if [ -n "$$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then \
		echo "Warning: the working tree has uncommitted changes, which the image $(TAG) contains"; \
	fi
	@case "$(REGISTRY_HOST)" in \
	*.dkr.ecr.*.amazonaws.com|*.dkr.ecr.*.amazonaws.com.cn) \
		if [ -z "$(LOGIN)" ]; then \
			echo "LOGIN is empty: using docker's existing login to $(REGISTRY_HOST)"; \
		else \
			echo "Logging in to $(REGISTRY_HOST) with aws ecr get-login-password"; \
			password=$$(aws ecr get-login-password --region $(ECR_REGION)) || exit 1; \
			printf '%s' "$$password" | docker login --username AWS --password-stdin $(REGISTRY_HOST) || exit 1; \
		fi ;; \
	*) \
		echo "$(REGISTRY_HOST) is not an Amazon ECR host: using docker's existing login, if any" ;; \
	esac
	docker tag $(IMAGE) $(PUSH_IMAGE):$(TAG)
	docker push $(PUSH_IMAGE):$(TAG)
	@if [ -n "$(RELEASE_VERSION)" ]; then \
		echo "docker tag $(IMAGE) $(PUSH_IMAGE):$(RELEASE_VERSION)"; \
		docker tag $(IMAGE) $(PUSH_IMAGE):$(RELEASE_VERSION) || exit 1; \
		echo "docker push $(PUSH_IMAGE):$(RELEASE_VERSION)"; \
		docker push $(PUSH_IMAGE):$(RELEASE_VERSION) || exit 1; \
	fi

bench: ## Run the benchmarks in bench/
	$(PYTHON) bench/run.py

example: ## Rebuild tests/example/models/model.tar.gz from tests/example/model-files
	mkdir -p $(EXAMPLE)/models
	tar --create --directory $(EXAMPLE)/model-files --sort=name \
		--owner=0 --group=0 --numeric-owner --mtime=2024-01-01T00:00:00Z \
		--mode=u+rw,go+r,go-w $$(ls -A $(EXAMPLE)/model-files) \
		| gzip -9 --no-name > $(EXAMPLE)/models/model.tar.gz

clean: ## Remove .venv, out/ and the image (the base image stays)
	rm -rf $(VENV) $(RUN_OUTPUT)
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	-docker image rm $(IMAGE)

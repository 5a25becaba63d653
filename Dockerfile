# Obliviate service image: `obliviate serve` (API, OpenAI-compatible gateway) plus one worker.
#
#   docker build -t obliviate .
#   docker run -p 8000:8000 -v obliviate-data:/data -v /models:/models:ro \
#     -e OBLIVIATE_BASE_MODEL=/models/your-hf-model obliviate
#
# CPU torch by default. For GPUs build on a CUDA-enabled Python base image, e.g.
#   docker build --build-arg BASE_IMAGE=<a CUDA runtime image with Python 3.11> -t obliviate:cuda .
# TORCH_INDEX_URL may name a PyTorch wheel index (a CPU-only index keeps the image small).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OBLIVIATE_DATA_DIR=/data \
    OBLIVIATE_MODEL_CACHE=/data/models \
    OBLIVIATE_HOST=0.0.0.0 \
    OBLIVIATE_PORT=8000

WORKDIR /app
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
      pip install --no-cache-dir "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL"; \
    else \
      pip install --no-cache-dir "$TORCH_SPEC"; \
    fi

COPY pyproject.toml README.md ./
COPY service ./service
COPY gpu_runtime ./gpu_runtime
RUN pip install --no-cache-dir .

RUN useradd --create-home --uid 10001 obliviate && mkdir -p /data && chown obliviate /data
USER obliviate
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/live').status == 200 else 1)"
CMD ["obliviate", "serve"]

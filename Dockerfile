# One image for all five services; docker-compose.yml picks the service with `command:`
# (`python -m services.order`, `python -m services.payment`, ...). The `fulfil` CLI is on PATH too.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PROJECT_ENVIRONMENT=/app/.venv

RUN pip install --no-cache-dir uv \
    && useradd --create-home --uid 10001 --user-group app

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml or uv.lock change.
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project --no-cache

# Then the source, and the project itself (gives the `fulfil` console script).
COPY shared/ shared/
COPY services/ services/
COPY tools/ tools/
RUN uv sync --frozen --no-dev --no-cache

# Code and virtualenv stay owned by root, so the service cannot rewrite them.
USER app

ENV PATH=/app/.venv/bin:$PATH \
    HTTP_HOST=0.0.0.0

CMD ["fulfil", "--help"]

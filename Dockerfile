# One image for every tradeflow process; docker-compose.yml picks the command
# (python -m api, python worker.py, python -m psp, python -m cli.courier_sim, tradeflow ...).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BIND_HOST=0.0.0.0 \
    TRADEFLOW_DATA_DIR=/data

WORKDIR /app
COPY . .
# Bytecode now: the workflow sandbox executes each workflow module again for every workflow
# run, and with PYTHONDONTWRITEBYTECODE nothing at run time would write it (infra/bytecode.py).
RUN pip install . \
    && python -m compileall -q /app \
    && useradd --create-home --uid 10001 tradeflow \
    && mkdir -p /data /keys \
    && chown tradeflow /data /keys

USER tradeflow
EXPOSE 8000 8100
CMD ["python", "-m", "api"]

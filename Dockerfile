# The bridge service and the Icareus simulator share this image; the command picks the role.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src/ src/
COPY config/ config/
COPY schemas/ schemas/
RUN pip install --no-cache-dir . && useradd --system --no-create-home bridge
USER bridge
ENTRYPOINT ["icareus-bridge"]
CMD ["run", "--config", "/app/config/bridge.yaml"]

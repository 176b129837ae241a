# The demo SIP trunk of docker/compose.yaml: Debian's Kamailio with kamailio.cfg
# (registrar + proxy with digest auth). Build context: docker/.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends kamailio \
    && rm -rf /var/lib/apt/lists/*
COPY kamailio.cfg /etc/kamailio/demo-trunk.cfg
USER kamailio
# Foreground, log to stderr; runtime files in /tmp (the package's /run/kamailio
# belongs to its system service).
ENTRYPOINT ["kamailio", "-f", "/etc/kamailio/demo-trunk.cfg", "-DD", "-E", "-m", "64", "-M", "8", "-Y", "/tmp"]

# The demo phone of docker/compose.yaml: Debian's baresip (core) run by
# baresip/entrypoint.sh: registers as `phone` to the demo trunk, answers at once,
# records what it hears under /recordings. Build context: docker/.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends baresip-core \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --shell /usr/sbin/nologin phone \
    && mkdir /recordings && chown phone /recordings
COPY baresip/ /opt/phone/
ENV RECORDINGS=/recordings
USER phone
ENTRYPOINT ["/opt/phone/entrypoint.sh"]

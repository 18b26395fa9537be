#!/bin/sh
# Put the weights the image is asked for into $MTDP_WEIGHTS_DIR and verify them (the Dockerfile's
# weights stage). The build fails naming the first weights file that is missing or fails its sha256:
# never an image without a weights file that was asked for.
#
#   MTDP_FETCH_WEIGHTS  1 (default): fetch every "arch:source" of MTDP_WEIGHTS (a file already copied
#                       from docker/weights/ is verified, not downloaded); 0: fetch nothing.
#   MTDP_WEIGHTS        "arch:source" pairs, e.g. "densenet121:imagenet resnet50:imagenet".
#   MTDP                the mtdp command (default: python -m mtdp_core).
# Every file in $MTDP_WEIGHTS_DIR (docker/weights/ and fetched) is then verified against its sha256.
set -eu
dir=${MTDP_WEIGHTS_DIR:?set MTDP_WEIGHTS_DIR}
mtdp=${MTDP:-python -m mtdp_core}
rm -f "$dir/README.md"
if [ "${MTDP_FETCH_WEIGHTS:-1}" = 1 ]; then
  for pair in ${MTDP_WEIGHTS:-}; do
    case $pair in
      ?*:?*) ;;
      *) echo "MTDP_WEIGHTS: '$pair' is not arch:source (e.g. resnet50:imagenet)" >&2; exit 1 ;;
    esac
    # shellcheck disable=SC2086  # $mtdp is a command line
    if ! $mtdp weights fetch "${pair%%:*}" "${pair#*:}" --dir "$dir"; then
      echo "weights $pair: not fetched or not verified (see above). Put its file in docker/weights/," \
        "drop it from MTDP_WEIGHTS, or build with MTDP_FETCH_WEIGHTS=0." >&2
      exit 1
    fi
  done
elif [ "${MTDP_FETCH_WEIGHTS}" != 0 ]; then
  echo "MTDP_FETCH_WEIGHTS=$MTDP_FETCH_WEIGHTS: use 1 (fetch MTDP_WEIGHTS) or 0 (fetch nothing)" >&2
  exit 1
fi
# shellcheck disable=SC2086
$mtdp weights verify

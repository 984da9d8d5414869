#!/usr/bin/env bash
# Spark GPU discovery script (the one Spark documents): prints the GPUs of this node as
# {"name": "gpu", "addresses": ["0", "1", ...]} for spark.executor.resource.gpu.discoveryScript.
ADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/","/g')
echo {\"name\": \"gpu\", \"addresses\":[\"$ADDRS\"]}

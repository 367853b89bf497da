#!/bin/sh
# The hand baseline for figure 2: the least a careful person does to deploy a prebuilt dist.
# usage: baseline_deploy.sh <dist> <releases dir> <url> <text the new version serves>
set -eu
dist=$1 releases=$2 url=$3 expect=$4
name=$(find "$dist" -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-8)
cp -a "$dist" "$releases/$name"
ln -sfn "$name" "$releases/.current.tmp"
mv -T "$releases/.current.tmp" "$releases/current"
until curl -fs "$url" | grep -q "$expect"; do :; done

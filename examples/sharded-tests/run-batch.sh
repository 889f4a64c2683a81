#!/bin/sh
# Runs the nextest ids in $KILN_TESTS_FILE ("BINARY-ID TEST-NAME", one a line) and leaves
# nextest's JUnit report as ./junit.xml. Each shard uses a profile of its own, so that
# shards on one machine do not write over each other's report.
set -u
work=$(pwd)
profile="kiln-shard-$KILN_SHARD_INDEX"
expr=""
while read -r binary test; do
  [ -n "$binary" ] || continue
  term="(binary_id($binary) & test(=$test))"
  expr="${expr:+$expr | }$term"
done < "$KILN_TESTS_FILE"
printf '[profile.%s.junit]\npath = "junit.xml"\n' "$profile" > "$work/nextest.toml"
cd "$KILN_PIPELINE_DIR/../.." || exit 1
cargo nextest run -p kiln-sharding --config-file "$work/nextest.toml" --profile "$profile" \
  --no-fail-fast -E "$expr"
status=$?
cp "target/nextest/$profile/junit.xml" "$work/junit.xml"
exit $status

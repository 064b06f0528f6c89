#!/usr/bin/env bash
# Fuzzes the REST API from its own OpenAPI document with schemathesis (issue 11): a real
# `rigfleet-server` on a throw-away data folder, an admin API token, every operation of
# /api/v1/openapi.json in positive and negative mode through all of schemathesis' phases, until
# at least API_FUZZ_MIN_REQUESTS requests (default 5,000) were sent. Passes when no response is
# a 5xx and every error (4xx) body is JSON {"code": string, "message": string}: schemathesis'
# `not_a_server_error` plus the custom check `error_body_is_code_message` while it runs, and a
# post-pass over every recorded exchange (the HAR file) that counts the requests and checks both
# rules again, independently of schemathesis' own bookkeeping.
#
#   scripts/api-fuzz.sh                          # build, run, print the counts
#   API_FUZZ_MAX_EXAMPLES=50 API_FUZZ_MIN_REQUESTS=500 scripts/api-fuzz.sh   # a quick pass
#   RIGFLEET_SERVER=… RIGFLEET_AGENT=… scripts/api-fuzz.sh   # given binaries, no build
#
# Needs Python 3 and `pip install schemathesis` (installed here if missing). Output (server log,
# schemathesis output, HAR, summary) stays in $API_FUZZ_OUT (default: a temp folder, printed).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
max_examples=${API_FUZZ_MAX_EXAMPLES:-250}
min_requests=${API_FUZZ_MIN_REQUESTS:-5000}
workers=${API_FUZZ_WORKERS:-2}
seed=${API_FUZZ_SEED:-1104}
rigs=${API_FUZZ_RIGS:-4}
# The gate; API_FUZZ_CHECKS=all,error_body_is_code_message adds schemathesis' conformance checks.
checks=${API_FUZZ_CHECKS:-not_a_server_error,error_body_is_code_message}
out=${API_FUZZ_OUT:-$(mktemp -d /tmp/rigfleet-api-fuzz.XXXXXX)}
mkdir -p "$out"

if ! command -v schemathesis >/dev/null 2>&1; then
    python3 -m pip install --quiet schemathesis
fi

if [ -z "${RIGFLEET_SERVER:-}" ] || [ -z "${RIGFLEET_AGENT:-}" ]; then
    (cd "$repo" && cargo build -p rigfleet-server -p rigfleet-agent)
    # Copies, so that a rebuild in the shared target folder cannot swap a binary mid-run.
    cp "$repo/target/debug/rigfleet-server" "$repo/target/debug/rigfleet-agent" "$out/"
    RIGFLEET_SERVER="$out/rigfleet-server"
    RIGFLEET_AGENT="$out/rigfleet-agent"
fi

data="$out/data"
rm -rf "$data"
mkdir -m 700 "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

"$RIGFLEET_SERVER" --data-dir "$data" --listen "127.0.0.1:$port" >"$out/server.log" 2>&1 &
server_pid=$!
trap 'kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 150); do
    curl -fs "$base/healthz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$out/server.log" >&2; exit 1; }
    sleep 0.2
done
curl -fs "$base/healthz" >/dev/null

# Tokens are made by the CLI on the same data folder (the first start created the admin user).
token=$("$RIGFLEET_SERVER" --data-dir "$data" api-token create --name api-fuzz --scope admin | tail -n 1)
case "$token" in rft_*) ;; *) echo "no API token: $token" >&2; exit 1 ;; esac

# A few real rigs (enrolled by the real agent), so the rig operations reach their handlers
# instead of answering 404: schemathesis draws `{rig}` from them half of the time.
enroll=$("$RIGFLEET_SERVER" --data-dir "$data" token create --max-uses "$rigs" | grep -o '^rf1\.[^ ]*' | head -n 1)
for n in $(seq 1 "$rigs"); do
    "$RIGFLEET_AGENT" enroll --server "$base" --token "$enroll" --state-dir "$out/agent-$n" \
        --name "fuzz-rig-$n" >>"$out/enroll.log" 2>&1
done
rig_ids=$(curl -fs -H "Authorization: Bearer $token" "$base/api/v1/rigs" |
    python3 -c 'import json, sys; print(json.dumps([r["id"] for r in json.load(sys.stdin)["items"]]))')
echo "rigs: $rig_ids" >&2
cat >"$out/schemathesis.toml" <<TOML
[dictionaries.rigs]
values = $rig_ids

[parameters]
"path.rig" = { dictionary = "rigs", probability = 0.5 }
TOML

cat >"$out/checks.py" <<'PY'
"""Custom schemathesis check: every error of the REST API is JSON {code, message}."""
import json

import schemathesis


@schemathesis.check
def error_body_is_code_message(ctx, response, case):
    if response.status_code < 400:
        return None
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(
            f"{response.status_code} body is not JSON: {response.content[:200]!r}"
        )
    if not isinstance(body, dict) or not isinstance(body.get("code"), str) or not isinstance(
        body.get("message"), str
    ):
        raise AssertionError(f"{response.status_code} body is not {{code, message}}: {body!r}"[:300])
    return None
PY

echo "schemathesis against $base/api/v1/openapi.json (max examples $max_examples, seed $seed)" >&2
st_status=0
cd "$out" # schemathesis keeps a cache folder (.schemathesis) in the working directory
SCHEMATHESIS_HOOKS="$out/checks.py" schemathesis --config-file "$out/schemathesis.toml" \
    run "$base/api/v1/openapi.json" \
    --url "$base" \
    -H "Authorization: Bearer $token" \
    --checks "$checks" \
    --mode all \
    --max-examples "$max_examples" \
    --seed "$seed" \
    --workers "$workers" \
    --continue-on-failure \
    --suppress-health-check all \
    --request-timeout 30 \
    --report har --report-har-path "$out/requests.har" \
    >"$out/schemathesis.log" 2>&1 || st_status=$?
tail -n 40 "$out/schemathesis.log"

# Post-pass over every exchange schemathesis recorded.
post_status=0
python3 - "$out/requests.har" "$min_requests" "$out/summary.txt" <<'PY' || post_status=$?
import collections
import json
import sys

har, minimum, summary_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
entries = json.load(open(har))["log"]["entries"]
statuses = collections.Counter()
server_errors, bad_errors = [], []
for e in entries:
    req, resp = e["request"], e["response"]
    status = resp["status"]
    statuses[status] += 1
    where = f'{req["method"]} {req["url"]}'
    if status >= 500 or status == 0:
        # 0: no response at all (the connection dropped: a handler panicked).
        server_errors.append(f"{status} {where}")
    if status >= 400:
        text = resp.get("content", {}).get("text") or ""
        try:
            body = json.loads(text)
            ok = isinstance(body, dict) and isinstance(body.get("code"), str) and isinstance(body.get("message"), str)
        except ValueError:
            ok = False
        if not ok:
            bad_errors.append(f"{status} {where}: {text[:120]!r}")
lines = [
    f"requests: {len(entries)}",
    "statuses: " + ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items())),
    f"5xx responses or no response: {len(server_errors)}",
    f"error bodies that are not JSON {{code, message}}: {len(bad_errors)}",
]
lines += [f"  5xx: {x}" for x in server_errors[:20]]
lines += [f"  bad error body: {x}" for x in bad_errors[:20]]
print("\n".join(lines))
open(summary_path, "w").write("\n".join(lines) + "\n")
if server_errors or bad_errors:
    sys.exit(1)
if len(entries) < minimum:
    print(f"only {len(entries)} requests, {minimum} wanted: raise API_FUZZ_MAX_EXAMPLES")
    sys.exit(1)
PY

echo "schemathesis exit status: $st_status; output in $out" >&2
[ "$st_status" -eq 0 ] && [ "$post_status" -eq 0 ]

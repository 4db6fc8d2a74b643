#!/bin/sh
# echo-automator.sh: an example coopr `exec` plugin in POSIX sh (no jq).
#
# Reads the task JSON on stdin, pretends to run it, and answers on stdout with one JSON object:
#   {"status":0,"stdout":"echo: INSTALL zk on host","stderr":"","result":{"echo":{...}}}
# See README.md in this directory for the protocol.
#
# Set ECHO_AUTOMATOR_FAIL=1 in the provisioner's environment to make every task fail.
set -eu

LC_ALL=C
export LC_ALL

input=$(cat)
input_bytes=$(printf '%s' "$input" | wc -c | tr -d ' ')

# A tiny JSON scanner: prints "path<TAB>raw string value" for the string values at the paths we
# want. It tracks nesting, so a "hostname" inside config.nodes is not mistaken for the node's own.
fields=$(printf '%s' "$input" | tr '\n\r\t' '   ' | awk '
BEGIN {
    want["taskId"] = 1; want["taskName"] = 1
    want["config.hostname"] = 1; want["config.service.name"] = 1
}
{ text = text $0 }
END {
    depth = 0; n = length(text); i = 1
    while (i <= n) {
        c = substr(text, i, 1)
        if (c == "\"") {
            j = i + 1; s = ""
            while (j <= n) {
                d = substr(text, j, 1)
                if (d == "\\") { s = s d substr(text, j + 1, 1); j += 2; continue }
                if (d == "\"") break
                s = s d; j++
            }
            i = j + 1
            if (depth > 0 && isobj[depth] && expectkey[depth]) { pending = s; continue }
            path = ""
            for (k = 1; k <= depth; k++) path = (k == 1) ? key[k] : path "." key[k]
            if (path in want) print path "\t" s
            continue
        }
        if (c == "{") { depth++; isobj[depth] = 1; expectkey[depth] = 1; key[depth] = "" }
        else if (c == "[") { depth++; isobj[depth] = 0; expectkey[depth] = 0; key[depth] = "[]" }
        else if (c == "}" || c == "]") { depth-- }
        else if (c == ":") { key[depth] = pending; expectkey[depth] = 0 }
        else if (c == ",") { if (isobj[depth]) expectkey[depth] = 1 }
        i++
    }
}')

field() {
    printf '%s\n' "$fields" | awk -F '	' -v p="$1" '$1 == p { print $2; exit }'
}

task_id=$(field taskId)
task_name=$(field taskName)
host=$(field config.hostname)
service=$(field config.service.name)

if [ -z "$task_name" ]; then
    echo "echo-automator: no taskName in the input" >&2
    printf '{"status":1,"stdout":"","stderr":"echo-automator: no taskName in the input"}\n'
    exit 0
fi

message="echo: $task_name"
[ -n "$service" ] && message="$message $service"
message="$message on ${host:-unknown-host}"

status=0
[ "${ECHO_AUTOMATOR_FAIL:-0}" = 1 ] && status=1

# The extracted values are still JSON-escaped, so they can be pasted back into JSON as they are.
printf '{"status":%s,"stdout":"%s","stderr":"","result":{"echo":{"taskId":"%s","taskName":"%s","inputBytes":%s}}}\n' \
    "$status" "$message" "$task_id" "$task_name" "$input_bytes"

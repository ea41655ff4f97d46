#!/bin/sh
# Enqueue one ERDU event (or a JSON list of events) with nothing but redis-cli: a raw LPUSH of a
# Celery protocol-2 message for the task erdu.ingest on the queue "ingest".
#
#   ERDU_REDIS_URL=redis://127.0.0.1:6379/0 \
#     examples/redis-lpush.sh '{"message": "Disk full on /var", "service": "files", "source": "cron"}'
#   echo '{"message": "..."}' | examples/redis-lpush.sh
#
# The event is passed through as it is: ERDU validates it, and keeps a refused one in
# rejected_events with the reason. Prints the task id.
set -eu

url="${ERDU_REDIS_URL:-redis://127.0.0.1:6379/0}"
if [ "$#" -gt 0 ]; then event="$1"; else event="$(cat)"; fi
[ -n "$event" ] || { echo "usage: $0 '<event JSON>'" >&2; exit 2; }

new_id() {
    if [ -r /proc/sys/kernel/random/uuid ]; then cat /proc/sys/kernel/random/uuid
    elif command -v uuidgen >/dev/null 2>&1; then uuidgen | tr 'A-Z' 'a-z'
    else od -An -N16 -tx1 /dev/urandom | tr -d ' \n' |
         sed 's/\(.\{8\}\)\(.\{4\}\)\(.\{4\}\)\(.\{4\}\)\(.\{12\}\)/\1-\2-\3-\4-\5/'
    fi
}

task_id="$(new_id)"
tag="$(new_id)"
# Protocol 2 body: [args, kwargs, embed]; erdu.ingest takes one argument, the event (or list).
body="$(printf '[[%s], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]' "$event" |
        base64 | tr -d '\n')"
message="$(printf '{"body": "%s", "content-encoding": "utf-8", "content-type": "application/json",
 "headers": {"lang": "sh", "task": "erdu.ingest", "id": "%s", "root_id": "%s", "parent_id": null,
  "group": null, "retries": 0, "eta": null, "expires": null, "timelimit": [null, null], "origin": "redis-lpush.sh"},
 "properties": {"correlation_id": "%s", "reply_to": "", "delivery_mode": 2,
  "delivery_info": {"exchange": "", "routing_key": "ingest"}, "priority": 0,
  "body_encoding": "base64", "delivery_tag": "%s"}}' "$body" "$task_id" "$task_id" "$task_id" "$tag")"

redis-cli -u "$url" LPUSH ingest "$message" >/dev/null
echo "$task_id"

#!/bin/sh
# The front's /cgi-bin/kv/...: hands the request to the api service (found by name through
# the node's DNS) and passes its answer back as it is.
api=$(nslookup api 2>/dev/null | awk '/^Address: /{print $2; exit}')
if [ -z "$api" ]; then
  printf 'Status: 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\nthe api is not reachable\n'
  exit 0
fi
{
  printf '%s /cgi-bin/kv%s HTTP/1.0\r\nContent-Length: %s\r\n\r\n' \
    "$REQUEST_METHOD" "$PATH_INFO" "${CONTENT_LENGTH:-0}"
  [ -z "$CONTENT_LENGTH" ] || head -c "$CONTENT_LENGTH"
} | nc -w 5 "$api" 8080

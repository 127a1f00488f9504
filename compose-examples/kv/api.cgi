#!/bin/sh
# The HTTP API (a CGI script of busybox httpd): /cgi-bin/kv/KEY
#   GET     the value, or 404
#   POST    stores the request body as the value (one line)
#   DELETE  removes the key
# It finds the store by its service name through the node's DNS and speaks the store's line
# protocol (see store.sh). busybox's libc resolves names only through /etc/hosts, hence
# nslookup.
reply() {
  printf 'Status: %s\r\nContent-Type: text/plain\r\n\r\n%s\n' "$1" "$2"
  exit 0
}
key=${PATH_INFO#/}
case "$key" in
  '' | .* | *[!A-Za-z0-9_.-]*) reply "400 Bad Request" "a key is letters, digits, '_', '.' and '-' (not first)" ;;
esac
store=$(nslookup store 2>/dev/null | awk '/^Address: /{print $2; exit}')
[ -n "$store" ] || reply "503 Service Unavailable" "the store is not reachable"
ask() { printf '%s\n' "$*" | nc -w 5 "$store" 7000; }
case "$REQUEST_METHOD" in
  GET) answer=$(ask GET "$key") ;;
  POST) answer=$(ask SET "$key" "$(head -c "${CONTENT_LENGTH:-0}" | tr '\r\n' '  ')") ;;
  DELETE) answer=$(ask DEL "$key") ;;
  *) reply "405 Method Not Allowed" "use GET, POST or DELETE" ;;
esac
case "$answer" in
  "VALUE "*) reply "200 OK" "${answer#VALUE }" ;;
  OK) reply "200 OK" "ok" ;;
  NOTFOUND) reply "404 Not Found" "no such key: $key" ;;
  *) reply "502 Bad Gateway" "the store answered: ${answer:-nothing}" ;;
esac

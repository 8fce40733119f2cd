#!/bin/bash
# perf_by_library.sh LABEL PORT -- SERVER COMMAND...: start the server, drive 1-image gRPC c8 load (benchmarks.serving.drive),
# perf record its main thread for 6 s, print CPU microseconds per request by library. Run from the repository root;
label=$1; port=$2; shift 3
load() {  # concurrency seconds -> req/s
    .venv/bin/python -c "from benchmarks.serving import drive; print(drive('grpc', '127.0.0.1:$port', 'separable', 1, $1, $2)['rps'])"
}
"$@" > /tmp/perf-$label.log 2>&1 &
PID=$!
sleep 7
load 8 2 > /dev/null
(perf record -F 2000 -g -t $PID -o /tmp/perf-$label.perf -- sleep 6 > /dev/null 2>&1 &)
rps=$(load 8 6.5)
sleep 0.7
kill $PID
echo "$label rps=$rps"
perf report -i /tmp/perf-$label.perf --no-children --sort dso -g none --stdio -n 2>/dev/null | grep "%" | head -9 | awk -v rps=$rps '{printf "  %8.1f us/req  %s\n", $2/2000/6/rps*1e6, $3}'

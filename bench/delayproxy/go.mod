module quiver/bench/delayproxy

go 1.22

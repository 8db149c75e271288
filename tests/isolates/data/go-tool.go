// go-tool: a small command-line program for WASI preview 1, in plain Go.
//
// The test suite runs it through /v1/wasi/run to check that a Go program built
// with the ordinary toolchain (GOOS=wasip1 GOARCH=wasm) runs unchanged:
// arguments, environment, stdin/stdout/stderr, files, directories and exit codes.
// rust-tool.rs implements the same commands in Rust; see there for the list.
package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
)

func fail(code int, msg string) {
	os.Stderr.WriteString("go-tool: " + msg + "\n")
	os.Exit(code)
}

func check(err error) {
	if err != nil {
		fail(1, err.Error())
	}
}

func main() {
	args := os.Args
	cmd := ""
	if len(args) > 1 {
		cmd = args[1]
	}
	var rest []string
	if len(args) > 2 {
		rest = args[2:]
	}
	out := os.Stdout
	switch {
	case cmd == "args":
		for _, a := range args {
			out.WriteString(a + "\n")
		}
	case cmd == "env":
		missing := false
		for _, name := range rest {
			if v, ok := os.LookupEnv(name); ok {
				out.WriteString(name + "=" + v + "\n")
			} else {
				missing = true
			}
		}
		if missing {
			fail(3, "some variables are unset")
		}
	case cmd == "upper" && len(rest) == 0:
		data, err := io.ReadAll(os.Stdin)
		check(err)
		out.Write(bytes.ToUpper(data))
	case cmd == "upper" && len(rest) == 2:
		data, err := os.ReadFile(rest[0])
		check(err)
		check(os.MkdirAll(filepath.Dir(rest[1]), 0o755))
		check(os.WriteFile(rest[1], bytes.ToUpper(data), 0o644))
	case cmd == "cat" && len(rest) == 1:
		data, err := os.ReadFile(rest[0])
		check(err)
		out.Write(data)
	case cmd == "ls" && len(rest) <= 1:
		dir := "."
		if len(rest) == 1 {
			dir = rest[0]
		}
		entries, err := os.ReadDir(dir)
		check(err)
		names := make([]string, 0, len(entries))
		for _, e := range entries {
			names = append(names, e.Name())
		}
		sort.Strings(names)
		for _, n := range names {
			out.WriteString(n + "\n")
		}
	case cmd == "rm" && len(rest) == 1:
		check(os.Remove(rest[0]))
	case cmd == "exit" && (len(rest) == 1 || len(rest) == 2):
		code, err := strconv.Atoi(rest[0])
		if err != nil {
			fail(2, "exit needs a number")
		}
		if len(rest) == 2 {
			os.Stderr.WriteString(rest[1] + "\n")
		}
		os.Exit(code)
	default:
		fail(2, "usage: go-tool args|env|upper|cat|ls|rm|exit ...")
	}
}

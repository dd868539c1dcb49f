// Package oraclepb is protoc-generated code for the tunneling Message schema,
// used only as a test oracle by package wire (differential fuzzing and
// comparison benchmarks). The library never imports it.
//
// Regenerate with protoc (Debian's protobuf-compiler) and
// `go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12`
// (the protobuf version in go.mod) on PATH, then `go generate ./wire/internal/oraclepb`.
package oraclepb

//go:generate protoc --go_out=. --go_opt=paths=source_relative message.proto

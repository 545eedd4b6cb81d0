//go:build tools

// Package tools pins cert-manager's controller and cainjector so that
// `go mod tidy` keeps their dependencies in go.mod and go.sum. build.sh
// builds them from this directory.
package tools

import (
	_ "github.com/cert-manager/cert-manager/cmd/cainjector"
	_ "github.com/cert-manager/cert-manager/cmd/controller"
)

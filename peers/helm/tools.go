//go:build tools

// Keeps helm's command package in the module graph so go.sum holds what it needs.
package tools

import _ "helm.sh/helm/v3/cmd/helm"

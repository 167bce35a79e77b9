// Command builtinplugin serves SPIRE's built-in aws_kms KeyManager as an external plugin: the very code
// that spire-server runs in its own process (github.com/spiffe/spire's pkg/server/plugin/keymanager/awskms,
// at the version scripts/bench_spire.py runs), behind the go-plugin handshake and gRPC of SPIRE's plugin
// SDK. scripts/bench_spire.py measures it next to the built-in and to this project's plugin: what the
// built-in loses by nothing but being out of process.
package main

import (
	"github.com/spiffe/spire-plugin-sdk/pluginmain"
	keymanagerv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/plugin/server/keymanager/v1"
	configv1 "github.com/spiffe/spire-plugin-sdk/proto/spire/service/common/config/v1"
	"github.com/spiffe/spire/pkg/server/plugin/keymanager/awskms"
)

func main() {
	plugin := awskms.New()
	pluginmain.Serve(keymanagerv1.KeyManagerPluginServer(plugin), configv1.ConfigServiceServer(plugin))
}

"""Local simulation of the AWS side: a simulated NSM (`nsm`), a local KMS endpoint (`kms`) with
its key-policy evaluator (`policy`), the development certificate chain (`pki`) and the simulated
enclave's measurements (`measure`). Nothing here is trusted outside development."""

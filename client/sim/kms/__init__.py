"""A local KMS endpoint: the KMS JSON 1.1 protocol over HTTP on loopback, for the simulation.

boto3 talks to it with `endpoint_url=http://127.0.0.1:<port>`, exactly as it talks to
`kms.<region>.amazonaws.com` in production (`X-Amz-Target: TrentService.<Operation>`, JSON bodies,
blobs in base64, errors as `{"__type": ..., "message": ...}` with status 400). Operations:
CreateKey, CreateAlias, ListAliases, DescribeKey, GetKeyPolicy, PutKeyPolicy, GenerateDataKey,
Encrypt, Decrypt — the last two with or without `Recipient`.

What it enforces, like KMS: every key-scoped call is evaluated against the key policy
(`client/sim/policy.py`) for the calling principal, with the condition keys KMS sets:
`kms:EncryptionContext:<k>`, `kms:EncryptionContextKeys`, `kms:CallerAccount`, `aws:PrincipalArn`,
and, for a `Recipient`, `kms:RecipientAttestation:ImageSha384` (PCR0, lowercase hex) and
`kms:RecipientAttestation:PCR<n>`. The attestation document is verified against the development
root (debug documents included, so the policy is what refuses their zero PCRs), and the answer to a
`Recipient` is real CMS EnvelopedData to the document's public key (`CiphertextForRecipient`, no
`Plaintext`), so the enclave's production code path runs unchanged. Keys are regional and
belong to the local KMS's one account, as in KMS: a key ARN naming another region than the
endpoint's is `NotFoundException: Invalid arn <region>`, and one naming another account (or a key
created in another region) `NotFoundException: Key '<arn>' does not exist`.

What it does not do: SigV4 signatures are not verified (there are no secrets to check them
against). Callers are identified by the access key id in the Authorization header, mapped to
principal ARNs in `<state>/principals.json` ({"AKID...": "arn:aws:iam::...:role/..."}); an
unknown access key is refused. Key material lives in `<state>/kms/keys.json` (mode 0600), shared by
every process using the same state dir. Nothing here protects real data.

Ciphertext blobs: b"SIMKMS1" || len(key id) (1 byte) || key id || 12-byte nonce || AES-256-GCM
ciphertext+tag, with AAD = key id || canonical JSON of the encryption context.

Modules: `state` (keys.json, principals.json and their lock), `fault` (the error answered to a
caller), `envelope` (the CMS answer to a Recipient), `blobs` (ciphertext blobs), `service` (the
operation handlers), `server` (HTTP), `__main__` (the command line):

    python -m client.sim.kms --port 0 --state DIR    (prints the bound port)
"""

"""What users deploy and run: the Envoy bootstrap, Kubernetes manifests, the Envoy process and the
echo provider.
"""

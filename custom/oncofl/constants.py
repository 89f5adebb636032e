"""Names both sides of a job use: the site's executor writes them, the server's components read them."""

# the reply header in which a site's failed task names the site, the datalist item, the error's type and the fix
# (fixed texts only; see oncofl.errors)
ERROR_HEADER = "oncofl_error"
# every task a site's executor answers (FLARE's scatter-and-gather and cross-site evaluation)
CLIENT_TASKS = ("train", "validate", "submit_model")
# update compression types of a job's --compression (oncofl.compression): FLARE's quantization types, and bfloat16
COMPRESSIONS = ("float16", "bfloat16", "blockwise8", "float4", "normfloat4")

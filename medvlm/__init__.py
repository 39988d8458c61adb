"""medvlm: chest X-ray vision-language models."""

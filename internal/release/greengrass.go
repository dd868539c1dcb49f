package release

func writeGreengrass(cfg Config) (string, error) { return "", nil }

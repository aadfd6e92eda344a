"""What every stage uses: errors, paths, atomic files, progress, architectures, threads."""

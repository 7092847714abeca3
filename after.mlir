error opening input file: cannot open input file 'payload.mlir': No such file or directory

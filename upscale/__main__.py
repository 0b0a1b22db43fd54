from upscale.cli import main

main()

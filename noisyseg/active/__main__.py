from noisyseg.active.loop import main

main()
